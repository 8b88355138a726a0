"""Candidates nominated by easy_tail alone are tested only when no other candidate is confirmed
(defenses/isolation.py, confirm_in_turn), on small synthetic images with a real quarantine model."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.isolation import confirm_in_turn
from ptdefense.training import FitConfig

SETTINGS = SimpleNamespace(seed_confidence=0.99, quarantine_threshold=0.1, quarantine_rounds=1, confirm_alpha=0.001,
                           quarantine_share=0.05, confirm_passes=1)
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


def test_an_easy_tail_candidate_waits_while_another_label_is_confirmed():
    train, poison, losses = poisoned_set()
    easy = torch.zeros(1500, dtype=torch.bool)
    easy[poison] = True
    candidates = {0: ["easy_disagreement"], 3: ["easy_tail"]}
    isolated, _, details = confirm_in_turn(train, candidates, losses, easy, 10, "resnet_small", 8, CONFIG,
                                           torch.device("cpu"), 0, SETTINGS, None)
    assert details["confirmed_classes"] == [0] and details["confirmation"]["0"]["confirmed"]
    assert details["confirmation"]["3"]["reason"].startswith("not tested"), details["confirmation"]["3"]
    assert set(details["candidates"]) == {"0", "3"} and len(details["seed_count"]) == 1
    assert set(isolated.tolist()) == set(poison.tolist())


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
