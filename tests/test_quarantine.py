"""The quarantine test's pieces (defenses/quarantine.py), on hand-made data."""

from __future__ import annotations

import torch

from ptdefense.defenses.quarantine import held_out_test, label_seeds, split_halves


def test_split_halves_partitions_the_seeds_reproducibly():
    seeds = torch.arange(100, 151)
    first, second = split_halves(seeds, seed=3)
    assert first.numel() == 26 and second.numel() == 25
    assert sorted(torch.cat([first, second]).tolist()) == seeds.tolist()
    assert torch.equal(split_halves(seeds, seed=3)[0], first)
    assert not torch.equal(split_halves(seeds, seed=4)[0], first)


def _quarantined(seed_hits: int, seeds: int, control_hits: int, controls: int) -> tuple:
    flags = torch.zeros(seeds + controls, dtype=torch.bool)
    flags[:seed_hits] = True
    flags[seeds:seeds + control_hits] = True
    return flags, torch.arange(seeds), torch.arange(seeds, seeds + controls)


def test_held_out_seeds_that_share_a_trigger_confirm_the_label():
    # 45 of 50 held-out seeds quarantined, 30 of 300 other samples (residual poison): a trigger.
    result = held_out_test(*_quarantined(45, 50, 30, 300), alpha=0.001)
    assert result["confirmed"] and result["p_value"] < 1e-20
    assert (result["held_out_seeds_quarantined"], result["controls_quarantined"]) == (45, 30)


def test_seeds_that_share_nothing_or_only_a_few_do_not_confirm_the_label():
    # Natural ambiguities: the held-out half is quarantined as rarely as the label's other samples.
    alike = held_out_test(*_quarantined(3, 50, 18, 300), alpha=0.001)
    assert not alike["confirmed"] and alike["p_value"] > 0.1
    # Significant, but a minority: not the effect a trigger has.
    minority = held_out_test(*_quarantined(20, 50, 6, 300), alpha=0.001)
    assert minority["p_value"] < 0.001 and not minority["confirmed"]
    assert "cleared" in minority["reason"]
    # Too few held-out seeds to test at all.
    few = held_out_test(*_quarantined(4, 4, 0, 300), alpha=0.001)
    assert not few["confirmed"] and "too few" in few["reason"]


def test_the_level_is_the_one_given():
    flags = _quarantined(8, 10, 20, 100)
    p_value = held_out_test(*flags, alpha=1.0)["p_value"]
    assert held_out_test(*flags, alpha=p_value * 1.01)["confirmed"]
    assert not held_out_test(*flags, alpha=p_value * 0.99)["confirmed"]


def test_content_candidates_seed_with_their_easy_disagreeing_samples_loss_candidates_with_their_low_loss_mode():
    members = torch.arange(40)
    losses = torch.cat([torch.full((10,), 1e-4), torch.linspace(0.5, 2.0, 30)])
    easy = torch.zeros(40, dtype=torch.bool)
    easy[[12, 15, 20]] = True  # three easy disagreeing samples, none in the low-loss mode
    seeds, anchors = label_seeds(members, ["content_disagreement"], losses, easy, 0.99, seed=0)
    assert seeds.tolist() == [12, 15, 20]
    assert anchors.tolist() == [37, 38, 39]  # as many anchors, the highest losses
    seeds, anchors = label_seeds(members, ["log_spectral_ratio"], losses, easy, 0.99, seed=0)
    assert sorted(seeds.tolist()) == list(range(10))  # the low-loss mode, 10 = a quarter of 40 at most
    assert anchors.numel() == 10
    seeds, _ = label_seeds(members, ["diversity_gap"], losses, easy, 0.99, seed=0, seed_count=4)
    assert seeds.tolist() == [0, 1, 2, 3]


def test_seeds_are_capped_at_a_quarter_of_the_label():
    members = torch.arange(20)
    easy = torch.ones(20, dtype=torch.bool)
    seeds, anchors = label_seeds(members, ["easy_disagreement"], torch.linspace(0, 1, 20), easy, 0.99, seed=0)
    assert seeds.tolist() == [0, 1, 2, 3, 4] and anchors.tolist() == [15, 16, 17, 18, 19]
    assert not set(seeds.tolist()) & set(anchors.tolist())
