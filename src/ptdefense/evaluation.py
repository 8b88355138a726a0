"""The comparison that the evaluate stage writes: every method side by side, scored against the true
poison indices.

Methods (rows of the comparison): no defense (the backdoored model), ABL, PT, and the clean
reference (the same model trained on the truly clean samples: a bound, not a defense). All four
were trained on the same poisoned data with the same model; this is the only stage that reads the
true poison indices besides the clean reference.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ptdefense.metrics import defense_effectiveness_rating, isolation_metrics
from ptdefense.params import Params

METHOD_TITLES = {"no_defense": "no defense", "abl": "ABL", "pt": "PT", "clean_reference": "clean reference (bound)"}
ISOLATION_KEYS = ("isolation_precision", "isolation_recall", "isolation_false_positive_rate", "isolation_f1",
                  "isolated_count", "isolated_per_class")
SWEEP_RATIOS = (0.005, *[step / 100 for step in range(1, 31)])


def compute_spent(*stage_metrics: dict) -> dict:
    """Wall seconds and training sample-epochs (samples × epochs trained on) summed over stages."""
    return {"wall_seconds": sum(float(m.get("wall_seconds", 0.0)) for m in stage_metrics),
            "sample_epochs": sum(int(m.get("sample_epochs", 0)) for m in stage_metrics)}


def comparison_table(scores: dict[str, dict], isolation: dict[str, dict], compute: dict[str, dict]) -> dict[str, dict]:
    """One row per method: test scores, DER against no defense, isolation scores, compute spent."""
    baseline = scores["no_defense"]
    table = {}
    for method, row in scores.items():
        entry = dict(row)
        entry["defense_effectiveness_rating"] = None if row["attack_success_rate"] is None else \
            defense_effectiveness_rating(baseline["clean_accuracy"], baseline["attack_success_rate"],
                                         row["clean_accuracy"], row["attack_success_rate"])
        if method in isolation:
            entry.update({key: isolation[method][key] for key in ISOLATION_KEYS if key in isolation[method]})
        entry.update(compute.get(method, {}))
        table[method] = entry
    return table


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _number(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def comparison_markdown(table: dict[str, dict], title: str, poison_count: int | None) -> str:
    lines = [f"# {title}", "",
             "| method | clean accuracy % | attack success rate % | robust accuracy % | DER | isolated | "
             "isolation precision % | recall % | FPR % | F1 % | wall s | sample-epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, row in table.items():
        isolated = row.get("isolated_count")
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | {_percent(row['clean_accuracy'])} "
            f"| {_percent(row['attack_success_rate'])} | {_percent(row['robust_accuracy'])} "
            f"| {_number(row['defense_effectiveness_rating'])} | {'—' if isolated is None else isolated} "
            f"| {_percent(row.get('isolation_precision'))} | {_percent(row.get('isolation_recall'))} "
            f"| {_percent(row.get('isolation_false_positive_rate'))} | {_percent(row.get('isolation_f1'))} "
            f"| {row.get('wall_seconds', 0):.0f} | {row.get('sample_epochs', 0):,} |")
    known = "unknown (attack.name none without data.poison_indices)" if poison_count is None else poison_count
    lines += ["", f"True poison samples in the training set: {known}. DER = [max(0, ΔASR) − max(0, ΔCA) + 1] / 2 "
              "against no defense. Compute counts training only: wall seconds of the method's own stages, and "
              "sample-epochs = samples × epochs trained on.", ""]
    return "\n".join(lines)


def isolation_sweep(rankings: dict[str, torch.Tensor], is_poison: torch.Tensor,
                    ratios: tuple[float, ...] = SWEEP_RATIOS, known: bool = True) -> list[dict]:
    """Precision and recall of the top `ratio` share of each ranking (higher score = more suspicious)."""
    orders = {name: torch.sort(score, descending=True, stable=True).indices for name, score in rankings.items()}
    rows = []
    for ratio in ratios:
        row = {"isolation_ratio": ratio}
        count = max(1, round(ratio * is_poison.numel()))
        for name, order in orders.items():
            hits = int(is_poison[order[:count]].sum())
            # Without known poison (a scan without data.poison_indices) neither is defined: NaN.
            row[f"{name}_precision"] = hits / count if known else float("nan")
            row[f"{name}_recall"] = hits / max(1, int(is_poison.sum())) if known else float("nan")
        rows.append(row)
    return rows


def isolation_scores(isolated: torch.Tensor, truth: torch.Tensor, truth_known: bool, labels: torch.Tensor,
                     num_classes: int) -> dict:
    """Precision, recall, FPR and F1 of an isolated set against the true poison (None when no poison is
    known), its size, and its count per label."""
    measured = isolation_metrics(isolated, truth, labels.numel())
    if not truth_known:
        measured = {key: (value if key == "isolated_count" else None) for key, value in measured.items()}
    measured["isolated_per_class"] = {str(c): int(n) for c, n in
                                      enumerate(torch.bincount(labels[isolated], minlength=num_classes).tolist())}
    return measured


def method_rows(table: dict[str, dict]) -> list[dict]:
    """plots/methods.csv: each method's clean accuracy and attack success rate (blank when unknown)."""
    return [{"method": METHOD_TITLES[method], "clean_accuracy": row["clean_accuracy"],
             "attack_success_rate": "" if row["attack_success_rate"] is None else row["attack_success_rate"]}
            for method, row in table.items()]


def freeze_layers_label(params: Params, used: int | None) -> str:
    """`freeze_layers=3`, or with `auto` the depth it chose: `freeze_layers=auto (3)`."""
    if params.freeze_layers == "auto" and used is not None:
        return f"freeze_layers=auto ({used})"
    return f"freeze_layers={params.freeze_layers}"


def comparison_title(params: Params, freeze_layers_used: int | None = None) -> str:
    attacked = f"scan of {params.data.root}" if params.attack.name == "none" else params.attack.name
    return (f"Comparison: {attacked} on {params.data.name}, {params.model.name}, "
            f"{freeze_layers_label(params, freeze_layers_used)}, isolation {params.isolation.method}")


def write_figures(params: Params, labels: torch.Tensor, is_poison: torch.Tensor, sweep_defined: bool,
                  losses: dict[str, torch.Tensor], pt_scores: torch.Tensor, flagged: list[int], table: dict,
                  plots_dir: Path, freeze_layers_used: int | None = None) -> list[Path]:
    """The loss histograms, the isolation sweep and the per-method bars (PNG, and CSV for `dvc plots`).

    `losses` holds each ranking's per-sample losses: partial (PT's partial model), full (the
    backdoored model) and abl (ABL's isolation model)."""
    from ptdefense.artifacts import write_csv
    from ptdefense.plots import plot_isolation_sweep, plot_loss_histograms, plot_method_scores

    histogram = plots_dir / "loss_histogram.png"
    plot_loss_histograms([(f"PT partial training ({freeze_layers_label(params, freeze_layers_used)})",
                           losses["partial"]),
                          ("full training (backdoored model)", losses["full"]),
                          (f"ABL isolation model ({params.abl.loss}, γ={params.abl.gamma:g})", losses["abl"])],
                         is_poison, histogram, focus=torch.isin(labels, torch.tensor(flagged, dtype=torch.int64)),
                         focus_name=f"labels PT flagged: {flagged}")
    sweep = isolation_sweep({"pt": pt_scores, "pt_partial_loss": -losses["partial"],
                             "full_training_loss": -losses["full"], "abl": -losses["abl"]}, is_poison,
                            known=sweep_defined)
    sweep_csv, sweep_png = plots_dir / "isolation_sweep.csv", plots_dir / "isolation_sweep.png"
    write_csv(sweep_csv, sweep)
    plot_isolation_sweep(sweep, {method: (table[method]["isolated_count"] / labels.numel(), table[method])
                                 for method in ("pt", "abl")}, sweep_png)
    rows = method_rows(table)
    methods_csv, methods_png = plots_dir / "methods.csv", plots_dir / "methods.png"
    write_csv(methods_csv, rows)
    plot_method_scores(rows, methods_png, f"{params.attack.name} on {params.data.name}")
    return [histogram, sweep_csv, sweep_png, methods_csv, methods_png]
