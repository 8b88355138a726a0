"""Metrics, named without ambiguity.

- clean_accuracy: share of the clean test set classified correctly.
- attack_success_rate: share of triggered test images (true class ≠ attack target) classified as
  the attacker's target.
- robust_accuracy: share of those triggered images still given their true label.
- isolation_*: the isolated set against the true poison indices.
"""

from __future__ import annotations

import torch


def _share(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if hits.numel() else 0.0


def clean_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return _share(predictions == labels)


def attack_success_rate(predictions: torch.Tensor, attack_targets: torch.Tensor) -> float:
    return _share(predictions == attack_targets)


def robust_accuracy(predictions: torch.Tensor, true_labels: torch.Tensor) -> float:
    return _share(predictions == true_labels)


def isolation_metrics(isolated: torch.Tensor, poisoned: torch.Tensor, num_samples: int) -> dict[str, float | int | None]:
    """Precision, recall (TPR), false-positive rate and F1 of an isolated index set.

    A ratio whose denominator is empty (nothing isolated, no poison, or no clean sample) is
    undefined and reported as None rather than as a misleading 0 or 1.
    """
    isolated_mask = torch.zeros(num_samples, dtype=torch.bool)
    poison_mask = torch.zeros(num_samples, dtype=torch.bool)
    isolated_mask[isolated] = True
    poison_mask[poisoned] = True
    true_positives = int((isolated_mask & poison_mask).sum())
    false_positives = int((isolated_mask & ~poison_mask).sum())
    isolated_count, poison_count = int(isolated_mask.sum()), int(poison_mask.sum())
    clean_count = num_samples - poison_count
    precision = true_positives / isolated_count if isolated_count else None
    recall = true_positives / poison_count if poison_count else None
    false_positive_rate = false_positives / clean_count if clean_count else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "isolation_precision": precision,
        "isolation_recall": recall,
        "isolation_false_positive_rate": false_positive_rate,
        "isolation_f1": f1,
        "isolated_count": isolated_count,
        "isolated_poison_count": true_positives,
        "poison_count": poison_count,
    }


def defense_effectiveness_rating(clean_accuracy_before: float, attack_success_rate_before: float,
                                 clean_accuracy_after: float, attack_success_rate_after: float) -> float:
    """DER = [max(0, ΔASR) − max(0, ΔCA) + 1] / 2, with Δ = no defense − defense.

    A drop in clean accuracy is a cost, so it is subtracted (one benchmark's code adds it).
    """
    delta_asr = attack_success_rate_before - attack_success_rate_after
    delta_ca = clean_accuracy_before - clean_accuracy_after
    return (max(0.0, delta_asr) - max(0.0, delta_ca) + 1.0) / 2.0
