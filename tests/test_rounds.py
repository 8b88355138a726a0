"""Refinement rounds (defenses/rounds.py): kept while they add more poison than clean samples (read
from content disagreement), stopped once the set is stable, at most max_rounds."""

from __future__ import annotations

import pytest
import torch

from ptdefense.defenses.rounds import poison_share_of_additions, refine_until_stable, set_change

N = 1000
# Samples 0..299 are "poison": their content disagrees with their label. Of the clean ones
# (300..999), one in ten disagrees as well (natural ambiguity).
DISAGREES = torch.zeros(N, dtype=torch.bool)
DISAGREES[:300] = True
DISAGREES[300::10] = True
EVERYONE = torch.ones(N, dtype=torch.bool)


def test_set_change_counts_added_and_dropped_samples():
    assert set_change(torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4, 5])) == 3
    assert set_change(torch.tensor([1, 2]), torch.tensor([2, 1])) == 0
    assert set_change(torch.tensor([], dtype=torch.int64), torch.tensor([7])) == 1


def test_the_poison_share_of_new_members_is_read_between_the_two_rates():
    isolated = torch.arange(100)  # poison only: disagreement rate 1
    # The rest: 200 poison and 700 clean, of which 70 disagree: rate 270 / 900 = 0.3.
    assert poison_share_of_additions(isolated, torch.arange(100, 150), EVERYONE, DISAGREES) == 1.0
    assert poison_share_of_additions(isolated, torch.arange(301, 401), EVERYONE, DISAGREES) == 0.0  # 10% < rest's 30%
    mixed = torch.cat([torch.arange(100, 150), torch.arange(301, 351)])  # 50 poison, 50 clean (5 disagreeing)
    assert poison_share_of_additions(isolated, mixed, EVERYONE, DISAGREES) == pytest.approx((0.55 - 0.3) / 0.7)


def test_no_share_when_content_does_not_tell_the_set_from_the_rest():
    same = torch.zeros(N, dtype=torch.bool)
    same[::10] = True  # isolated and rest disagree equally often (clean-label poison)
    assert poison_share_of_additions(torch.arange(100), torch.arange(100, 150), EVERYONE, same) is None
    assert poison_share_of_additions(torch.arange(100), torch.arange(0), EVERYONE, DISAGREES) is None


def growing(order: torch.Tensor, step: int, calls: list):
    """A refinement that isolates `step` more samples of `order` each round; probability = round index."""
    def refine(previous: torch.Tensor, round_index: int):
        calls.append(round_index)
        return order[: min(previous.numel() + step, order.numel())], torch.full((N,), float(round_index))
    return refine


def test_rounds_take_in_poison_until_the_set_is_stable():
    calls = []
    isolated, _, rounds = refine_until_stable(torch.arange(100), torch.zeros(N), growing(torch.arange(300), 50, calls),
                                              1, 10, EVERYONE, DISAGREES)
    assert [r["size"] for r in rounds] == [150, 200, 250, 300, 300] and all(r["kept"] for r in rounds)
    assert torch.equal(isolated, torch.arange(300)) and calls == [1, 2, 3, 4, 5]


def test_a_round_that_takes_in_clean_samples_is_dropped_and_the_refinement_stops():
    order = torch.cat([torch.arange(200), torch.arange(301, 1000)])  # all poison first, then clean samples
    before = torch.full((N,), -1.0)
    isolated, probability, rounds = refine_until_stable(torch.arange(100), before, growing(order, 150, []), 1, 10,
                                                        EVERYONE, DISAGREES)
    # Round 1 adds 100 poison and 50 clean (share ≥ ½, kept); round 2 adds 150 clean (dropped).
    assert [(r["added"], r["kept"]) for r in rounds] == [(150, True), (150, False)]
    assert rounds[1]["poison_share_of_added"] == 0.0 and "drift" in rounds[1]["reason"]
    assert torch.equal(isolated, order[:250])
    assert torch.equal(probability, torch.full((N,), 1.0))  # round 1's probabilities, not round 2's


def test_without_content_contrast_one_round_runs():
    same = torch.zeros(N, dtype=torch.bool)
    calls = []
    isolated, _, rounds = refine_until_stable(torch.arange(100), torch.zeros(N), growing(torch.arange(N), 100, calls),
                                              1, 10, EVERYONE, same)
    assert calls == [1] and rounds[0]["poison_share_of_added"] is None and isolated.numel() == 200


def test_max_rounds_counts_the_rounds_run_before():
    calls = []
    _, _, rounds = refine_until_stable(torch.arange(10), torch.zeros(N), growing(torch.arange(300), 100, calls), 1, 3,
                                       EVERYONE, DISAGREES)
    assert calls == [1, 2] and [r["size"] for r in rounds] == [110, 210]
    assert refine_until_stable(torch.arange(10), torch.zeros(N), growing(torch.arange(300), 100, []), 1, 1,
                               EVERYONE, DISAGREES)[2] == []
