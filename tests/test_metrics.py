"""Metrics on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from ptdefense.metrics import (attack_success_rate, clean_accuracy, defense_effectiveness_rating,
                               isolation_metrics, robust_accuracy)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# --- isolation ----------------------------------------------------------------------------------

def test_isolation_hand_made():
    m = isolation_metrics(t([1, 2, 5]), t([1, 2, 3, 4]), 10)
    assert m["isolation_precision"] == pytest.approx(2 / 3)
    assert m["isolation_recall"] == pytest.approx(1 / 2)
    assert m["isolation_false_positive_rate"] == pytest.approx(1 / 6)
    assert m["isolation_f1"] == pytest.approx(4 / 7)
    assert m["isolated_count"] == 3
    assert m["isolated_poison_count"] == 2
    assert m["poison_count"] == 4


def test_isolation_order_and_duplicates_do_not_matter():
    a = isolation_metrics(t([5, 2, 1, 2]), t([4, 3, 2, 1, 1]), 10)
    b = isolation_metrics(t([1, 2, 5]), t([1, 2, 3, 4]), 10)
    assert a == b


def test_isolation_perfect():
    m = isolation_metrics(t([0, 7]), t([7, 0]), 8)
    assert m["isolation_precision"] == 1.0
    assert m["isolation_recall"] == 1.0
    assert m["isolation_false_positive_rate"] == 0.0
    assert m["isolation_f1"] == 1.0


def test_isolation_all_wrong():
    m = isolation_metrics(t([0, 1]), t([2, 3]), 4)
    assert m["isolation_precision"] == 0.0
    assert m["isolation_recall"] == 0.0
    assert m["isolation_false_positive_rate"] == 1.0
    assert m["isolation_f1"] == 0.0


def test_isolation_everything_isolated():
    m = isolation_metrics(torch.arange(10), t([3, 4]), 10)
    assert m["isolation_precision"] == pytest.approx(0.2)
    assert m["isolation_recall"] == 1.0
    assert m["isolation_false_positive_rate"] == 1.0
    assert m["isolation_f1"] == pytest.approx(2 * 0.2 / 1.2)


def test_isolation_nothing_isolated():
    m = isolation_metrics(torch.empty(0, dtype=torch.int64), t([1, 2]), 10)
    assert m["isolation_precision"] is None
    assert m["isolation_recall"] == 0.0
    assert m["isolation_false_positive_rate"] == 0.0
    assert m["isolation_f1"] is None
    assert m["isolated_count"] == 0


def test_isolation_no_poison():
    m = isolation_metrics(t([1, 2]), torch.empty(0, dtype=torch.int64), 10)
    assert m["isolation_recall"] is None
    assert m["isolation_precision"] == 0.0
    assert m["isolation_false_positive_rate"] == pytest.approx(0.2)
    assert m["isolation_f1"] is None
    assert m["poison_count"] == 0


def test_isolation_all_poison():
    m = isolation_metrics(t([0, 1]), torch.arange(4), 4)
    assert m["isolation_false_positive_rate"] is None
    assert m["isolation_precision"] == 1.0
    assert m["isolation_recall"] == 0.5


def test_isolation_values_are_plain_python():
    m = isolation_metrics(t([1, 2, 5]), t([1, 2, 3, 4]), 10)
    for key, value in m.items():
        assert value is None or type(value) in (int, float), key


# --- accuracies ---------------------------------------------------------------------------------

def test_clean_accuracy():
    assert clean_accuracy(t([0, 1, 2, 3]), t([0, 1, 0, 0])) == pytest.approx(0.5)
    assert clean_accuracy(t([1, 1, 1]), t([1, 1, 1])) == 1.0
    assert clean_accuracy(t([0, 0, 0, 0, 0]), t([1, 0, 1, 1, 1])) == pytest.approx(0.2)


def test_attack_success_rate():
    predictions, targets = t([0, 0, 3, 0, 5]), t([0, 0, 0, 0, 0])
    assert attack_success_rate(predictions, targets) == pytest.approx(0.6)


def test_robust_accuracy():
    predictions, true_labels = t([0, 2, 3, 0]), t([1, 2, 3, 4])
    assert robust_accuracy(predictions, true_labels) == pytest.approx(0.5)


def test_asr_and_ra_on_the_same_triggered_set():
    """A triggered image counts for ASR when it gets the target, for RA when it keeps its class."""
    true_labels, targets = t([1, 2, 3, 4, 5]), torch.zeros(5, dtype=torch.int64)
    predictions = t([0, 0, 3, 4, 9])
    assert attack_success_rate(predictions, targets) == pytest.approx(0.4)
    assert robust_accuracy(predictions, true_labels) == pytest.approx(0.4)


def test_empty_inputs_give_zero():
    empty = torch.empty(0, dtype=torch.int64)
    assert clean_accuracy(empty, empty) == 0.0
    assert attack_success_rate(empty, empty) == 0.0
    assert robust_accuracy(empty, empty) == 0.0


def test_accuracy_returns_float():
    assert type(clean_accuracy(t([1]), t([1]))) is float


# --- defense effectiveness rating ---------------------------------------------------------------

def test_der_subtracts_the_clean_accuracy_drop():
    # ΔASR = 1.0, ΔCA = 0.1 → (1.0 − 0.1 + 1) / 2 = 0.95 (adding the drop would give 1.05).
    assert defense_effectiveness_rating(0.9, 1.0, 0.8, 0.0) == pytest.approx(0.95)


@pytest.mark.parametrize("ca_before, asr_before, ca_after, asr_after, expected", [
    (0.9, 1.0, 0.9, 0.0, 1.0),     # perfect defense, no cost
    (0.9, 1.0, 0.9, 1.0, 0.5),     # nothing changed
    (0.9, 0.8, 0.6, 0.3, 0.6),     # (0.5 - 0.3 + 1) / 2
    (0.9, 1.0, 0.0, 1.0, 0.05),    # all cost, no gain: (0 - 0.9 + 1) / 2
])
def test_der_hand_made(ca_before, asr_before, ca_after, asr_after, expected):
    assert defense_effectiveness_rating(ca_before, asr_before, ca_after, asr_after) == pytest.approx(expected)


def test_der_clips_a_gain_in_clean_accuracy():
    # CA rises by 0.05: no bonus, same as an unchanged CA.
    assert defense_effectiveness_rating(0.85, 1.0, 0.9, 0.2) == pytest.approx((0.8 + 1) / 2)
    assert defense_effectiveness_rating(0.85, 1.0, 0.9, 0.2) == defense_effectiveness_rating(0.85, 1.0, 0.85, 0.2)


def test_der_clips_a_rise_in_asr():
    # ASR rises by 0.3: no penalty beyond "no gain"; CA drop 0.1 still costs.
    assert defense_effectiveness_rating(0.9, 0.5, 0.8, 0.8) == pytest.approx((0 - 0.1 + 1) / 2)
    assert defense_effectiveness_rating(0.9, 0.5, 0.9, 0.8) == pytest.approx(0.5)


def test_der_bounds():
    assert 0.0 <= defense_effectiveness_rating(1.0, 0.0, 0.0, 1.0) <= 1.0
    assert defense_effectiveness_rating(1.0, 0.0, 0.0, 1.0) == pytest.approx(0.0)
    assert defense_effectiveness_rating(0.0, 1.0, 1.0, 0.0) == pytest.approx(1.0)
