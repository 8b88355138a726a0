"""The comparison report: rows per method, DER against no defense, compute, and the ratio sweep."""

from __future__ import annotations

import pytest
import torch

from ptdefense.defenses.seeding import low_loss_mode_posterior
from ptdefense.evaluation import comparison_markdown, comparison_table, compute_spent, isolation_sweep
from ptdefense.metrics import isolation_metrics

SCORES = {
    "no_defense": {"clean_accuracy": 0.90, "attack_success_rate": 1.00, "robust_accuracy": 0.00},
    "abl": {"clean_accuracy": 0.80, "attack_success_rate": 0.10, "robust_accuracy": 0.70},
    "pt": {"clean_accuracy": 0.89, "attack_success_rate": 0.00, "robust_accuracy": 0.88},
    "clean_reference": {"clean_accuracy": 0.91, "attack_success_rate": 0.02, "robust_accuracy": 0.89},
}


def _table():
    isolation = {"pt": isolation_metrics(torch.tensor([0, 1, 2, 9]), torch.tensor([0, 1, 2]), 10),
                 "abl": isolation_metrics(torch.tensor([0]), torch.tensor([0, 1, 2]), 10)}
    compute = {"no_defense": compute_spent({"wall_seconds": 10.0, "sample_epochs": 300}),
               "pt": compute_spent({"wall_seconds": 4.0, "sample_epochs": 100}, {"wall_seconds": 1.5},
                                   {"wall_seconds": 6.0, "sample_epochs": 270})}
    return comparison_table(SCORES, isolation, compute)


def test_der_per_row_on_hand_made_numbers():
    table = _table()
    assert table["no_defense"]["defense_effectiveness_rating"] == pytest.approx(0.5)
    assert table["abl"]["defense_effectiveness_rating"] == pytest.approx((0.9 - 0.1 + 1) / 2)  # 0.9
    assert table["pt"]["defense_effectiveness_rating"] == pytest.approx((1.0 - 0.01 + 1) / 2)  # 0.995
    # A gain in clean accuracy is not rewarded: DER of the clean reference is (0.98 + 1) / 2.
    assert table["clean_reference"]["defense_effectiveness_rating"] == pytest.approx(0.99)


def test_isolation_columns_only_for_methods_that_isolate():
    table = _table()
    assert table["pt"]["isolation_precision"] == pytest.approx(0.75)
    assert table["pt"]["isolation_recall"] == pytest.approx(1.0)
    assert table["pt"]["isolation_false_positive_rate"] == pytest.approx(1 / 7)
    assert table["abl"]["isolation_recall"] == pytest.approx(1 / 3)
    assert "isolation_precision" not in table["no_defense"] and "isolation_recall" not in table["clean_reference"]


def test_compute_sums_a_methods_stages():
    table = _table()
    assert table["pt"]["wall_seconds"] == pytest.approx(11.5)
    assert table["pt"]["sample_epochs"] == 370
    assert table["no_defense"]["sample_epochs"] == 300


def test_markdown_has_one_row_per_method_and_dashes_where_undefined():
    text = comparison_markdown(_table(), "title", 3)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["no defense", "ABL", "PT", "clean reference (bound)"]
    assert "| 89.00 | 0.00 | 88.00 | 0.9950 | 4 | 75.00 | 100.00 | 14.29 |" in text
    assert rows[0].count("—") == 5  # no isolation: isolated, precision, recall, FPR, F1


def test_isolation_sweep_on_a_hand_made_ranking():
    is_poison = torch.tensor([True, True, False, False, True, False, False, False, False, False])
    score = torch.tensor([9.0, 8.0, 7.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    rows = isolation_sweep({"m": score}, is_poison, ratios=(0.1, 0.3, 0.5))
    assert [row["m_precision"] for row in rows] == pytest.approx([1.0, 2 / 3, 0.6])
    assert [row["m_recall"] for row in rows] == pytest.approx([1 / 3, 2 / 3, 1.0])


@pytest.mark.parametrize("poison_count", [30, 150, 300, 600])
def test_low_loss_mode_size_finds_the_poison_count_without_the_rate(poison_count):
    """Clean log-losses around 10^-1, poison around 10^-3.5 (as measured under partial training)."""
    generator = torch.Generator().manual_seed(poison_count)
    clean = 10 ** (-1.0 + 0.4 * torch.randn(3000 - poison_count, generator=generator))
    poison = 10 ** (-3.5 + 0.6 * torch.randn(poison_count, generator=generator))
    posterior = low_loss_mode_posterior(torch.cat([clean, poison]), seed=0)
    assert abs(int((posterior > 0.5).sum()) - poison_count) <= 0.1 * poison_count + 5
    confident = torch.nonzero(posterior >= 0.99).flatten()
    assert confident.numel() >= poison_count // 2
    assert float((confident >= 3000 - poison_count).float().mean()) >= 0.99  # the confident ones are poison
