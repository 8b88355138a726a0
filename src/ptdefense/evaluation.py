"""The evaluate stage: the only place that reads the true poison indices."""

from __future__ import annotations

from pathlib import Path

import torch

from ptdefense.artifacts import write_json, write_text
from ptdefense.data.dataset import ImageSet, load_npz
from ptdefense.metrics import (attack_success_rate, clean_accuracy, defense_effectiveness_rating,
                               isolation_metrics, robust_accuracy)
from ptdefense.models.io import load_model
from ptdefense.params import Params
from ptdefense.plots import plot_loss_histograms
from ptdefense.tracking import flatten
from ptdefense.training import per_sample_loss, predict
from ptdefense import pipeline as paths


def model_metrics(model, clean: ImageSet, triggered: ImageSet, attack_targets: torch.Tensor, device) -> dict:
    triggered_predictions = predict(model, triggered.images, device)
    return {
        "clean_accuracy": clean_accuracy(predict(model, clean.images, device), clean.labels),
        "attack_success_rate": attack_success_rate(triggered_predictions, attack_targets),
        "robust_accuracy": robust_accuracy(triggered_predictions, triggered.labels),
    }


def _report(metrics: dict, params: Params) -> str:
    backdoored, defended, isolation = metrics["backdoored"], metrics["defended"], metrics["isolation"]

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.2f}"

    lines = [
        f"# PT evaluation: {params.attack.name} on {params.data.name}, {params.model.name}, "
        f"freeze_layers={params.freeze_layers}",
        "",
        "| model | clean accuracy % | attack success rate % | robust accuracy % |",
        "|---|---|---|---|",
        f"| no defense (backdoored) | {pct(backdoored['clean_accuracy'])} | {pct(backdoored['attack_success_rate'])} "
        f"| {pct(backdoored['robust_accuracy'])} |",
        f"| PT (defended) | {pct(defended['clean_accuracy'])} | {pct(defended['attack_success_rate'])} "
        f"| {pct(defended['robust_accuracy'])} |",
        "",
        f"Defense effectiveness rating (DER): {metrics['defense_effectiveness_rating']:.4f}",
        "",
        "| isolation | value |",
        "|---|---|",
        f"| isolated samples | {isolation['isolated_count']} |",
        f"| true poison samples | {isolation['poison_count']} |",
        f"| precision % | {pct(isolation['isolation_precision'])} |",
        f"| recall % | {pct(isolation['isolation_recall'])} |",
        f"| false-positive rate % | {pct(isolation['isolation_false_positive_rate'])} |",
        f"| F1 % | {pct(isolation['isolation_f1'])} |",
        "",
    ]
    return "\n".join(lines)


def evaluate_pipeline(params: Params, device: torch.device) -> tuple[dict, list[Path]]:
    train = ImageSet.load(paths.TRAIN_SET)
    clean = ImageSet.load(paths.TEST_CLEAN)
    triggered_arrays = load_npz(paths.TEST_TRIGGERED, "poison-data", ("images", "labels", "attack_targets"))
    triggered = ImageSet(torch.from_numpy(triggered_arrays["images"]), torch.from_numpy(triggered_arrays["labels"]))
    attack_targets = torch.from_numpy(triggered_arrays["attack_targets"])
    truth = torch.from_numpy(load_npz(paths.TRUTH, "poison-data", ("poison_indices",))["poison_indices"]).long()
    isolation_arrays = load_npz(paths.ISOLATED, "isolate", ("isolated_indices", "partial_losses"))
    isolated = torch.from_numpy(isolation_arrays["isolated_indices"]).long()
    partial_losses = torch.from_numpy(isolation_arrays["partial_losses"])
    backdoored, _ = load_model(paths.BACKDOORED_MODEL, "train-backdoored")
    defended, _ = load_model(paths.DEFENDED_MODEL, "finetune")

    before = model_metrics(backdoored, clean, triggered, attack_targets, device)
    after = model_metrics(defended, clean, triggered, attack_targets, device)
    isolation = isolation_metrics(isolated, truth, len(train))
    num_classes = int(max(int(train.labels.max()) + 1, params.attack.target_label + 1))
    isolation["isolated_per_class"] = {str(c): int(n) for c, n in
                                       enumerate(torch.bincount(train.labels[isolated], minlength=num_classes))}
    metrics = {
        "backdoored": before,
        "defended": after,
        "isolation": isolation,
        "defense_effectiveness_rating": defense_effectiveness_rating(
            before["clean_accuracy"], before["attack_success_rate"], after["clean_accuracy"], after["attack_success_rate"]),
    }
    metrics_path = paths.METRICS_DIR / "evaluate.json"
    write_json(metrics_path, metrics)

    is_poison = torch.zeros(len(train), dtype=torch.bool)
    is_poison[truth] = True
    full_losses = per_sample_loss(backdoored, train, device)
    histogram = paths.PLOTS_DIR / "loss_histogram.png"
    plot_loss_histograms([(f"partial training (freeze_layers={params.freeze_layers})", partial_losses),
                          ("full training (backdoored model)", full_losses)], is_poison, histogram)
    report = paths.REPORTS_DIR / "evaluate.md"
    write_text(report, _report(metrics, params))
    print(_report(metrics, params))
    flat = {key: value for key, value in flatten(metrics).items()}
    return flat, [metrics_path, histogram, report]
