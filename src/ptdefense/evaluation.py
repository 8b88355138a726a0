"""The evaluate stage: every method side by side, scored against the true poison indices.

Methods (rows of the comparison): no defense (the backdoored model), ABL, PT, and the clean
reference (the same model trained on the truly clean samples: a bound, not a defense). All four
were trained on the same poisoned data with the same model; this is the only stage that reads the
true poison indices besides the clean reference.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ptdefense.artifacts import read_json, write_json, write_text
from ptdefense.data.dataset import ImageSet, load_npz
from ptdefense.metrics import (attack_success_rate, clean_accuracy, defense_effectiveness_rating,
                               isolation_metrics, robust_accuracy)
from ptdefense.models.io import load_model, skipped_reason
from ptdefense.params import Params
from ptdefense.plots import plot_isolation_sweep, plot_loss_histograms, plot_method_scores
from ptdefense.tracking import flatten
from ptdefense.training import per_sample_loss, predict
from ptdefense import pipeline as paths
from ptdefense.pipeline import dataset_info

METHOD_TITLES = {"no_defense": "no defense", "abl": "ABL", "pt": "PT", "clean_reference": "clean reference (bound)"}
ISOLATION_KEYS = ("isolation_precision", "isolation_recall", "isolation_false_positive_rate", "isolation_f1",
                  "isolated_count", "isolated_per_class")
SWEEP_RATIOS = (0.005, *[step / 100 for step in range(1, 31)])


def model_metrics(model, clean: ImageSet, triggered: ImageSet, attack_targets: torch.Tensor, device) -> dict:
    if not len(triggered):  # attack.name none: no trigger is known, so nothing measures the backdoor
        return {"clean_accuracy": clean_accuracy(predict(model, clean.images, device), clean.labels),
                "attack_success_rate": None, "robust_accuracy": None}
    triggered_predictions = predict(model, triggered.images, device)
    return {
        "clean_accuracy": clean_accuracy(predict(model, clean.images, device), clean.labels),
        "attack_success_rate": attack_success_rate(triggered_predictions, attack_targets),
        "robust_accuracy": robust_accuracy(triggered_predictions, triggered.labels),
    }


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


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def evaluate_pipeline(params: Params, device: torch.device) -> tuple[dict, list[Path]]:
    train = ImageSet.load(paths.TRAIN_SET)
    clean = ImageSet.load(paths.TEST_CLEAN)
    triggered_arrays = load_npz(paths.TEST_TRIGGERED, "poison-data", ("images", "labels", "attack_targets"))
    triggered = ImageSet(torch.from_numpy(triggered_arrays["images"]), torch.from_numpy(triggered_arrays["labels"]))
    attack_targets = torch.from_numpy(triggered_arrays["attack_targets"])
    truth_arrays = load_npz(paths.TRUTH, "poison-data", ("poison_indices",))
    truth = torch.from_numpy(truth_arrays["poison_indices"]).long()
    # A scan (attack.name none) without data.poison_indices knows no poison: no isolation precision.
    truth_known = bool(truth_arrays.get("known", True))
    # An empty list is knowledge too (isolation precision is defined), but no ranking can find poison
    # that is not there: the sweep's recall is undefined.
    sweep_defined = truth_known and truth.numel() > 0
    pt_arrays = load_npz(paths.ISOLATED, "isolate", ("isolated_indices", "partial_losses", "suspicion_scores"))
    abl_arrays = load_npz(paths.ABL_ISOLATION, "abl", ("isolated_indices", "isolation_losses"))
    model_sources = {"no_defense": (paths.BACKDOORED_MODEL, "train-backdoored"), "abl": (paths.ABL_MODEL, "abl"),
                     "pt": (paths.DEFENDED_MODEL, "finetune"),
                     "clean_reference": (paths.CLEAN_REFERENCE_MODEL, "clean-reference")}
    models = {method: load_model(directory, producer)[0] for method, (directory, producer) in model_sources.items()
              if skipped_reason(directory) is None}
    stage_metrics = {stage: read_json(paths.METRICS_DIR / f"{stage.replace('-', '_')}.json", stage)
                     for stage in ("train-backdoored", "partial-train", "isolate", "finetune", "abl", "clean-reference")}

    scores = {method: model_metrics(model, clean, triggered, attack_targets, device) for method, model in models.items()}
    num_classes = dataset_info()["num_classes"]
    isolated_sets = {"pt": torch.from_numpy(pt_arrays["isolated_indices"]).long(),
                     "abl": torch.from_numpy(abl_arrays["isolated_indices"]).long()}
    isolation = {}
    for method, isolated in isolated_sets.items():
        measured = isolation_metrics(isolated, truth, len(train))
        if not truth_known:
            measured = {key: (value if key == "isolated_count" else None) for key, value in measured.items()}
        measured["isolated_per_class"] = {str(c): int(n) for c, n in
                                          enumerate(torch.bincount(train.labels[isolated], minlength=num_classes).tolist())}
        isolation[method] = measured
    compute = {"no_defense": compute_spent(stage_metrics["train-backdoored"]),
               "abl": compute_spent(stage_metrics["abl"]),
               "pt": compute_spent(stage_metrics["partial-train"], stage_metrics["isolate"], stage_metrics["finetune"]),
               "clean_reference": compute_spent(stage_metrics["clean-reference"])}
    table = comparison_table(scores, isolation, compute)
    metrics = {**table, "poison_count": int(truth.numel()) if truth_known else None}
    metrics_path = paths.METRICS_DIR / "evaluate.json"
    write_json(metrics_path, metrics)

    is_poison = torch.zeros(len(train), dtype=torch.bool)
    is_poison[truth] = True
    partial_losses = torch.from_numpy(pt_arrays["partial_losses"])
    full_losses = per_sample_loss(models["no_defense"], train, device)
    abl_losses = torch.from_numpy(abl_arrays["isolation_losses"])
    histogram = paths.PLOTS_DIR / "loss_histogram.png"
    flagged = [int(label) for label in stage_metrics["isolate"].get("suspicious_classes") or []]
    plot_loss_histograms([(f"PT partial training (freeze_layers={params.freeze_layers})", partial_losses),
                          ("full training (backdoored model)", full_losses),
                          (f"ABL isolation model ({params.abl.loss}, γ={params.abl.gamma:g})", abl_losses)],
                         is_poison, histogram, focus=torch.isin(train.labels, torch.tensor(flagged, dtype=torch.int64)),
                         focus_name=f"labels PT flagged: {flagged}")
    sweep = isolation_sweep({"pt": torch.from_numpy(pt_arrays["suspicion_scores"]), "pt_partial_loss": -partial_losses,
                             "full_training_loss": -full_losses, "abl": -abl_losses}, is_poison, known=sweep_defined)
    sweep_csv, sweep_png = paths.PLOTS_DIR / "isolation_sweep.csv", paths.PLOTS_DIR / "isolation_sweep.png"
    _write_csv(sweep_csv, sweep)
    chosen = {"pt": (isolation["pt"]["isolated_count"] / len(train), isolation["pt"]),
              "abl": (isolation["abl"]["isolated_count"] / len(train), isolation["abl"])}
    plot_isolation_sweep(sweep, chosen, sweep_png)
    method_rows = [{"method": METHOD_TITLES[m], "clean_accuracy": row["clean_accuracy"],
                    "attack_success_rate": "" if row["attack_success_rate"] is None else row["attack_success_rate"]}
                   for m, row in table.items()]
    methods_csv, methods_png = paths.PLOTS_DIR / "methods.csv", paths.PLOTS_DIR / "methods.png"
    _write_csv(methods_csv, method_rows)
    plot_method_scores(method_rows, methods_png, f"{params.attack.name} on {params.data.name}")

    attacked = f"scan of {params.data.root}" if params.attack.name == "none" else params.attack.name
    title = (f"Comparison: {attacked} on {params.data.name}, {params.model.name}, "
             f"freeze_layers={params.freeze_layers}, isolation {params.isolation.method}")
    report_text = comparison_markdown(table, title, metrics["poison_count"])
    report = paths.REPORTS_DIR / "evaluate.md"
    write_text(report, report_text)
    print(report_text)
    return flatten(metrics), [metrics_path, report, histogram, sweep_csv, sweep_png, methods_csv, methods_png]
