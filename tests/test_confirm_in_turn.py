"""Candidates nominated by easy_tail alone are tested only when no other candidate is confirmed
(defenses/isolation.py, confirm_in_turn): on small synthetic images with a real quarantine model, and
with a stub in its place for the bookkeeping (alpha shares, which scores are kept)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.isolation import confirm_in_turn
from ptdefense.training import FitConfig

SETTINGS = SimpleNamespace(seed_confidence=0.99, quarantine_threshold=0.1, quarantine_rounds=1, confirm_alpha=0.001,
                           quarantine_share=0.05, confirm_passes=1, flag_z=3.5)
CONFIG = FitConfig(epochs=2, batch_size=64, lr=0.05, precision="fp32", min_steps=200)


def poisoned_set() -> tuple[ImageSet, torch.Tensor, torch.Tensor]:
    """Ten classes, each a bar in its own row; 150 samples of other classes triggered and relabelled to 0,
    and fitted far more easily than anything else (their losses)."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.arange(10).repeat(150)
    images = torch.randint(0, 60, (1500, 1, 16, 16), generator=generator).float()
    images[torch.arange(1500), 0, 1 + labels, 2:14] = 230.0
    others = torch.nonzero(labels != 0).flatten()
    poison = others[torch.randperm(others.numel(), generator=generator)[:150]]
    images[poison, 0, 13:16, 13:16] = 255.0
    labels[poison] = 0
    losses = 0.3 + 0.5 * torch.rand(1500, generator=generator)
    losses[poison] = 1e-4 * (1 + torch.rand(150, generator=generator))
    return ImageSet(images.to(torch.uint8), labels), poison, losses


@pytest.mark.parametrize("reasons", [["easy_tail"], ["diversity_gap"], ["log_spectral_ratio", "easy_tail"]])
def test_a_candidate_seeded_from_its_low_loss_mode_waits_while_a_content_candidate_is_confirmed(reasons):
    """The Blend 1% sandals: a label the loss statistics alone nominated is not tested beside a confirmed target."""
    train, poison, losses = poisoned_set()
    easy = torch.zeros(1500, dtype=torch.bool)
    easy[poison] = True
    candidates = {0: ["easy_disagreement"], 3: reasons}
    isolated, _, details = confirm_in_turn(train, candidates, losses, easy, 10, "resnet_small", 8, CONFIG,
                                           torch.device("cpu"), 0, SETTINGS, None)
    assert details["confirmed_classes"] == [0] and details["confirmation"]["0"]["confirmed"]
    assert details["confirmation"]["3"]["reason"].startswith("not tested"), details["confirmation"]["3"]
    assert set(details["candidates"]) == {"0", "3"} and len(details["seed_count"]) == 1
    # Bounds, not identity: the quarantine model's run-to-run variation may move a borderline sample.
    assert len(set(isolated.tolist()) & set(poison.tolist())) >= 0.9 * poison.numel()
    assert len(set(isolated.tolist()) - set(poison.tolist())) <= 5


def test_an_easy_tail_candidate_is_tested_when_no_other_label_is_confirmed():
    """The content view saw nothing of the poison (no easy disagreement in label 0): a clean label
    nominated by content is cleared, then label 0, nominated by its easy tail alone, is confirmed."""
    train, poison, losses = poisoned_set()
    easy = torch.zeros(1500, dtype=torch.bool)
    easy[torch.nonzero(train.labels == 5).flatten()[:40]] = True  # a clean label's ambiguities
    candidates = {0: ["easy_tail"], 5: ["content_disagreement", "easy_disagreement"]}
    isolated, _, details = confirm_in_turn(train, candidates, losses, easy, 10, "resnet_small", 8, CONFIG,
                                           torch.device("cpu"), 0, SETTINGS, None)
    assert not details["confirmation"]["5"]["confirmed"]
    assert details["confirmation"]["0"]["confirmed"] and details["confirmed_classes"] == [0]
    assert len(details["seed_count"]) == 2  # one quarantine model per group
    assert len(set(isolated.tolist()) & set(poison.tolist())) >= 0.9 * poison.numel()
    assert len(set(isolated.tolist()) - set(poison.tolist())) <= 5


def test_each_group_gets_its_bonferroni_share_and_a_group_too_thin_to_test_keeps_the_last_scores(monkeypatch):
    """A stub in place of the quarantine test: the group seeded by content (one label) is cleared after
    training a model, and the low-loss-mode group (two labels) has too few seeds to train any. Each group is tested
    at confirm_alpha × its share of the three candidates, and the trained model's scores are kept."""
    from ptdefense.defenses import isolation

    calls, scores = [], torch.linspace(0, 1, 20)

    def stub(train, group, *args):
        calls.append((sorted(group), args[11]))  # args[11]: the alpha passed on
        if 0 in group:  # the low-loss-mode group: nothing testable, no model, zero scores
            return torch.empty(0, dtype=torch.int64), torch.zeros(20), {
                "confirmation": {str(label): {"confirmed": False} for label in group}, "seed_count": [],
                "quarantine_sample_epochs": 0,
                "confirmed_classes": []}
        return torch.empty(0, dtype=torch.int64), scores, {
            "confirmation": {str(label): {"confirmed": False} for label in group}, "seed_count": [12],
            "seed_copies": [1], "quarantine_sample_epochs": 240, "confirmed_classes": []}

    monkeypatch.setattr(isolation, "confirm_and_isolate", stub)
    train = ImageSet(torch.zeros(20, 1, 4, 4, dtype=torch.uint8), torch.arange(4).repeat(5))
    candidates = {1: ["content_disagreement"], 0: ["easy_tail"], 2: ["diversity_gap", "easy_tail"]}
    isolated, probability, details = confirm_in_turn(train, candidates, torch.rand(20), torch.zeros(20, dtype=torch.bool),
                                                     4, "resnet_small", 8, CONFIG, torch.device("cpu"), 0, SETTINGS,
                                                     None)
    assert [group for group, _ in calls] == [[1], [0, 2]]  # seeded by content first, then from the low-loss mode
    assert [alpha for _, alpha in calls] == [pytest.approx(0.001 / 3), pytest.approx(0.001 * 2 / 3)]
    assert torch.equal(probability, scores) and isolated.numel() == 0
    assert details["seed_count"] == [12] and details["seed_copies"] == [1]
    assert details["quarantine_sample_epochs"] == 240 and set(details["confirmation"]) == {"0", "1", "2"}


def test_untested_candidates_are_not_reported_as_cleared():
    """metrics/isolate.json's cleared_classes holds only labels the quarantine test cleared; those too
    thin to test, or waiting on a confirmed label, are untested_classes."""
    from ptdefense.defenses.isolation import cleared_and_untested

    quarantine = {"candidates": {"0": ["easy_disagreement"], "1": ["easy_tail"], "4": ["content_disagreement"],
                                 "6": ["easy_tail"]},
                  "confirmed_classes": [0],
                  "confirmation": {"0": {"confirmed": True, "controls": 90, "reason": "held-out seeds quarantined"},
                                   "1": {"confirmed": False, "seeds": 4, "reason": "cleared untested: 4 seeds leave 2"},
                                   "4": {"confirmed": False, "controls": 80, "reason": "cleared: p=0.3"},
                                   "6": {"confirmed": False, "reason": "not tested: easy_tail alone nominated it"}}}
    assert cleared_and_untested(quarantine) == ([4], [1, 6])


def test_which_candidates_wait_depends_on_how_they_are_seeded():
    """Method auto: every candidate seeded from its low-loss mode waits; fixed-count seeds (method
    quarantine): only those easy_tail alone nominated."""
    from ptdefense.defenses.isolation import waits_for_others

    assert waits_for_others(["diversity_gap"], None) and waits_for_others(["log_spectral_ratio", "easy_tail"], None)
    assert not waits_for_others(["easy_disagreement", "diversity_gap"], None)
    assert waits_for_others(["easy_tail"], 300) and not waits_for_others(["diversity_gap", "easy_tail"], 300)
