"""Refinement rounds (defenses/rounds.py): run until the isolated set is stable, at most max_rounds."""

from __future__ import annotations

import torch

from ptdefense.defenses.rounds import refine_until_stable, set_change


def test_set_change_counts_added_and_dropped_samples():
    assert set_change(torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4, 5])) == 3
    assert set_change(torch.tensor([1, 2]), torch.tensor([2, 1])) == 0
    assert set_change(torch.tensor([], dtype=torch.int64), torch.tensor([7])) == 1


def growing(step: int, limit: int, calls: list):
    """A refinement that adds `step` samples per round until `limit` are isolated."""
    def refine(previous: torch.Tensor, round_index: int):
        calls.append(round_index)
        size = min(previous.numel() + step, limit)
        return torch.arange(size), torch.zeros(limit)
    return refine


def test_rounds_stop_once_a_round_changes_the_set_by_at_most_one_percent():
    calls = []
    isolated, _, sizes = refine_until_stable(torch.arange(100), torch.zeros(1), growing(50, 300, calls), 1, 10)
    assert sizes == [150, 200, 250, 300, 300] and calls == [1, 2, 3, 4, 5]
    assert torch.equal(isolated, torch.arange(300))


def test_a_change_within_the_tolerance_counts_as_stable():
    calls = []
    _, _, sizes = refine_until_stable(torch.arange(1000), torch.zeros(1), growing(10, 5000, calls), 1, 10)
    assert sizes == [1010] and calls == [1]  # 10 of 1,000 is 1%: stable
    _, _, sizes = refine_until_stable(torch.arange(1000), torch.zeros(1), growing(11, 5000, []), 1, 10)
    assert len(sizes) == 9  # 1.1% per round: never stable, so max_rounds decides


def test_max_rounds_counts_the_rounds_run_before():
    calls = []
    _, _, sizes = refine_until_stable(torch.arange(10), torch.zeros(1), growing(100, 10_000, calls), 1, 3)
    assert calls == [1, 2] and sizes == [110, 210]
    assert refine_until_stable(torch.arange(10), torch.zeros(1), growing(100, 10_000, []), 1, 1)[2] == []


def test_the_last_rounds_probability_is_returned():
    def refine(previous, round_index):
        return previous, torch.full((3,), float(round_index))
    _, probability, sizes = refine_until_stable(torch.arange(5), torch.zeros(3), refine, 2, 6)
    assert sizes == [5] and torch.equal(probability, torch.full((3,), 2.0))
