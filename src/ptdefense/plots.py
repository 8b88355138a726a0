"""Figures (matplotlib, headless): what the trigger looks like, and how loss separates poison."""

from __future__ import annotations

from pathlib import Path

import torch

from ptdefense.artifacts import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _as_image(tensor: torch.Tensor):
    array = tensor.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def plot_poison_examples(clean, poisoned, path: str | Path, attack_name: str, count: int = 6) -> None:
    """Clean and poisoned training images with their labels, and the trigger itself.

    The third row is |poisoned − clean|, stretched to full contrast per image, so that triggers too
    faint to see (a warp, a 20/255 sinusoid, an adversarial perturbation) still show their shape.
    """
    plt = _figure()
    indices = poisoned.poison_indices[:count].tolist()
    columns = max(1, len(indices))
    figure, axes = plt.subplots(3, columns, figsize=(1.8 * columns, 5.8), squeeze=False)
    for column, index in enumerate(indices):
        before, after = clean.images[index], poisoned.data.images[index]
        difference = (after.float() - before.float()).abs()
        difference = difference / difference.max().clamp(min=1.0) * 255
        panels = ((before, f"clean, label {int(clean.labels[index])}"),
                  (after, f"poisoned, label {int(poisoned.data.labels[index])}"),
                  (difference, f"trigger, max {int((after.float() - before.float()).abs().max())}"))
        for row, (image, title) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(_as_image(image.to(torch.uint8)), cmap="gray", vmin=0, vmax=255)
            axis.set_title(title, fontsize=7)
            axis.axis("off")
    figure.suptitle(f"{attack_name}: training images before and after poisoning")
    _save(figure, path)
    plt.close(figure)


def plot_loss_histograms(panels: list[tuple[str, torch.Tensor]], is_poison: torch.Tensor, path: str | Path,
                         focus: torch.Tensor | None = None, focus_name: str = "") -> None:
    """Per-sample loss (log scale), poisoned against clean, one column per model.

    With `focus` (a boolean mask, e.g. the labels PT flagged), a second row repeats each panel on
    those samples only: ranking by loss works within a label, where the poison competes only with
    that label's clean samples, not with every easy sample of the training set.
    """
    plt = _figure()
    import numpy as np

    rows = [("all training samples", torch.ones_like(is_poison))]
    if focus is not None and bool(focus.any()):
        rows.append((focus_name, focus))
    figure, axes = plt.subplots(len(rows), len(panels), figsize=(5 * len(panels), 3.4 * len(rows)), squeeze=False,
                                sharex=True)
    # One set of bins for every panel, so that the models' loss scales compare at a glance.
    every = torch.cat([losses for _, losses in panels]).clamp(min=1e-8).log10().numpy()
    bins = np.linspace(every.min(), every.max() + 1e-6, 60)
    for row, (row_name, mask) in enumerate(rows):
        for axis, (title, losses) in zip(axes[row], panels):
            values = losses.clamp(min=1e-8).log10().numpy()
            clean, poisoned = (mask & ~is_poison).numpy(), (mask & is_poison).numpy()
            axis.hist(values[clean], bins=bins, alpha=0.6, label="clean", color="tab:blue")
            axis.hist(values[poisoned], bins=bins, alpha=0.6, label="poisoned", color="tab:red")
            axis.set_yscale("log")
            axis.set_title(f"{title}\n{row_name}", fontsize=9)
            axis.legend(fontsize=8)
        axes[row][0].set_ylabel("training samples")
    for axis in axes[-1]:
        axis.set_xlabel("log10 per-sample cross-entropy")
    _save(figure, path)
    plt.close(figure)


def plot_isolation_sweep(rows: list[dict], chosen: dict[str, tuple[float, dict]], path: str | Path) -> None:
    """Isolation precision and recall of each ranking as the isolated share grows.

    `chosen` marks where each method actually stopped: (isolated share, its isolation metrics).
    """
    plt = _figure()
    names = [key.removesuffix("_precision") for key in rows[0] if key.endswith("_precision")]
    ratios = [100 * row["isolation_ratio"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = dict(zip(names, ("tab:green", "tab:olive", "tab:grey", "tab:purple", "tab:brown")))
    for axis, measure in zip(axes, ("precision", "recall")):
        for name in names:
            axis.plot(ratios, [row[f"{name}_{measure}"] for row in rows], label=name.replace("_", " "),
                      color=colours[name])
        for name, (share, scores) in chosen.items():
            value = scores.get(f"isolation_{measure}")
            if value is not None:
                axis.scatter([100 * share], [value], color=colours.get(name, "black"), marker="*", s=120, zorder=3)
        axis.set_xlabel("isolated share of the training set, % (top of each ranking)")
        axis.set_title(f"isolation {measure} (★ = the method's own choice)", fontsize=10)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(figure, path)
    plt.close(figure)


def plot_method_scores(rows: list[dict], path: str | Path, title: str) -> None:
    """Clean accuracy and attack success rate per method, as grouped bars."""
    plt = _figure()
    import numpy as np

    positions = np.arange(len(rows))
    figure, axis = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.6))
    for offset, (key, label, colour) in zip((-0.2, 0.2), (("clean_accuracy", "clean accuracy", "tab:blue"),
                                                          ("attack_success_rate", "attack success rate", "tab:red"))):
        if all(row[key] in (None, "") for row in rows):
            continue  # a scan with no known trigger has no attack success rate
        values = [100 * row[key] for row in rows]
        bars = axis.bar(positions + offset, values, width=0.4, label=label, color=colour)
        axis.bar_label(bars, fmt="%.1f", fontsize=7)
    axis.set_xticks(positions, [row["method"] for row in rows], fontsize=8)
    axis.set_ylabel("%")
    axis.set_ylim(0, 110)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="upper center", ncol=2)
    _save(figure, path)
    plt.close(figure)


def plot_image_grid(images: torch.Tensor, titles: list[str], path: str | Path, title: str, columns: int = 8) -> None:
    """uint8 (N, C, H, W) images in a grid, one caption each (the isolate stage's top suspects)."""
    plt = _figure()
    rows = max(1, -(-len(titles) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows + 0.4), squeeze=False)
    for position, axis in enumerate(axes.flat):
        axis.axis("off")
        if position < len(titles):
            axis.imshow(_as_image(images[position]), cmap="gray", vmin=0, vmax=255)
            axis.set_title(titles[position], fontsize=6)
    if not titles:
        axes[0][0].text(0.0, 0.5, "nothing to show", fontsize=9)
    figure.suptitle(title, fontsize=9)
    _save(figure, path)
    plt.close(figure)
