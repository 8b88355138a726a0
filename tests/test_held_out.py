"""The quarantine test's empirical null (defenses/held_out.py) on hand-made 2 × 2 tables: a
low-loss-mode candidate is confirmed only when its effect stands out from the labels that no
statistic nominated."""

from __future__ import annotations

import math

import pytest

from ptdefense.defenses.held_out import MIN_NULL_LABELS, against_null, log_odds_ratio


def table(hits: int, count: int, control_hits: int, control_count: int, confirmed: bool = True) -> dict:
    return {"held_out_seeds": count, "held_out_seeds_quarantined": hits, "controls": control_count,
            "controls_quarantined": control_hits, "p_value": 1e-9 if confirmed else 0.5, "confirmed": confirmed,
            "reason": "confirmed" if confirmed else "cleared: the plain test"}


# The clean labels of Fashion-MNIST 60k, Blend 1%, but sandals (5, the candidate), each seeded from its
# low-loss mode in one quarantine model (the exploratory run quoted in defenses/held_out.py): odds ratios
# 0.9 to 2.4.
NULLS = {1: table(66, 93, 55, 93), 2: table(257, 341, 199, 341), 3: table(173, 285, 135, 285),
         4: table(15, 214, 17, 214), 6: table(179, 286, 158, 286), 7: table(78, 143, 48, 143),
         8: table(0, 39, 0, 39), 9: table(0, 11, 0, 11)}


def test_the_log_odds_ratio_adds_a_half_to_each_cell():
    assert log_odds_ratio(table(45, 50, 30, 300)) == pytest.approx(math.log(45.5 * 270.5 / (5.5 * 30.5)))
    assert log_odds_ratio(table(0, 10, 0, 10)) == pytest.approx(0.0)  # finite where a cell is empty


def test_an_effect_far_beyond_the_null_labels_is_confirmed():
    """Label-consistent 5% on Fashion-MNIST 60k: the target's held-out seeds 742/750, its controls 457/750."""
    result = against_null(table(742, 750, 457, 750), NULLS, flag_z=3.5)
    assert result["confirmed"] and result["null_z"] > 3.5, result
    assert result["null_labels"] == [1, 2, 3, 4, 6, 7, 8, 9] and len(result["null_log_odds_ratios"]) == 8


def test_an_effect_like_the_null_labels_is_cleared_even_though_the_plain_test_passed():
    """Sandals in Blend 1% (`d3426ca`): 62/94 against 23/94 passed Fisher and the majority; the clean
    labels' natural sub-populations come close enough."""
    result = against_null(table(62, 94, 23, 94), NULLS, flag_z=3.5)
    assert not result["confirmed"] and result["reason"].startswith("cleared:"), result
    assert result["null_z"] < 3.5


def test_the_null_never_confirms_what_the_plain_test_cleared():
    result = against_null(table(40, 94, 1, 94, confirmed=False), NULLS, flag_z=3.5)  # a minority: not a trigger
    assert result["null_z"] > 3.5 and not result["confirmed"]
    assert result["reason"].startswith("cleared: the plain test")


def test_a_null_label_without_controls_is_left_out():
    result = against_null(table(742, 750, 457, 750), {**NULLS, 5: table(13, 94, 0, 0)}, flag_z=3.5)
    assert 5 not in result["null_labels"] and len(result["null_log_odds_ratios"]) == 8


def test_with_too_few_null_labels_the_candidate_is_not_confirmed():
    few = {1: NULLS[1], 2: NULLS[2], 9: table(2, 4, 0, 4)}  # label 9 holds out fewer seeds than the test needs
    result = against_null(table(90, 94, 10, 94), few, flag_z=3.5)
    assert len(few) >= MIN_NULL_LABELS and result["null_labels"] == [1, 2]
    assert not result["confirmed"] and result["null_z"] is None and "2 labels without a sign" in result["reason"]
