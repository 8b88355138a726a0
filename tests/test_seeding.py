"""Where a candidate's seeds come from decides its controls (defenses/seeding.py). Hand-made tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptdefense.defenses.seeding import (CONTENT, FIXED_COUNT, LOW_LOSS_MODE, candidate_controls, label_seeds,
                                        seeding_kind)


@pytest.mark.parametrize(("reasons", "seed_count", "kind"), [
    (["easy_disagreement"], None, CONTENT),
    (["log_spectral_ratio", "content_disagreement"], None, CONTENT),
    (["diversity_gap", "easy_tail"], None, LOW_LOSS_MODE),
    (["log_spectral_ratio"], None, LOW_LOSS_MODE),
    ([], None, LOW_LOSS_MODE),  # a null label: seeded like a loss-only candidate
    (["easy_disagreement"], 40, FIXED_COUNT),  # method quarantine, whatever nominated it
    (["diversity_gap"], 300, FIXED_COUNT),
])
def test_seeding_kind_follows_the_statistics_that_nominated_the_label(reasons, seed_count, kind):
    assert seeding_kind(reasons, seed_count) == kind


def _label_with_two_contents():
    """Label 0: 40 samples in two content clusters (20 near e0, 20 near e1); label 1: 40 others."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.zeros(40, dtype=torch.int64), torch.ones(40, dtype=torch.int64)])
    centres = torch.eye(4)[torch.cat([torch.zeros(20, dtype=torch.int64), torch.ones(20, dtype=torch.int64),
                                      torch.full((40,), 2)])]
    content = F.normalize(centres + 0.05 * torch.randn(80, 4, generator=generator), dim=1)
    return labels, content


def test_low_loss_mode_seeds_get_controls_of_their_own_content_and_content_seeds_random_ones():
    """Seeds from the first cluster: matched controls come from that cluster, one per held-out seed;
    random controls are a fifth of the label's other samples, drawn from either cluster."""
    labels, content = _label_with_two_contents()
    seeds, anchors, half_b = torch.arange(0, 10), torch.arange(30, 40), torch.arange(5, 10)
    matched = candidate_controls(content, labels, 0, ["diversity_gap"], None, seeds, anchors, half_b, seed=0)
    assert matched.numel() == half_b.numel()
    assert bool((matched >= 10).all() and (matched < 20).all()), matched  # same cluster, neither seed nor anchor
    for reasons, seed_count in ((["easy_disagreement"], None), (["diversity_gap"], 5)):
        drawn = candidate_controls(content, labels, 0, reasons, seed_count, seeds, anchors, half_b, seed=0)
        assert drawn.numel() == 4  # a fifth of the 20 samples that are neither seed nor anchor
        assert bool((labels[drawn] == 0).all()) and not bool(torch.isin(drawn, torch.cat([seeds, anchors])).any())
    # Without content features (no frozen prefix view), low-loss-mode seeds fall back to random controls.
    assert candidate_controls(None, labels, 0, ["diversity_gap"], None, seeds, anchors, half_b, seed=0).numel() == 4


def test_fixed_count_seeds_are_the_lowest_losses_and_content_seeds_the_easy_disagreeing_ones():
    members = torch.arange(20)
    losses = torch.linspace(1.0, 0.05, 20)  # sample 19 is fitted most easily
    easy = torch.zeros(20, dtype=torch.bool)
    easy[[2, 4, 6]] = True
    fixed, fixed_anchors = label_seeds(members, ["easy_disagreement"], losses, easy, 0.9, 0, seed_count=3)
    assert fixed.tolist() == [19, 18, 17] and fixed_anchors.tolist() == [2, 1, 0]
    by_content, _ = label_seeds(members, ["easy_disagreement"], losses, easy, 0.9, 0)
    assert by_content.tolist() == [6, 4, 2]  # lowest loss first (3 easy samples, under the cap of a quarter of the label, 5)
