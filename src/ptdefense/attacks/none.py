"""`attack.name: none`: the training set is taken as it is. This is the scanning workflow, for a
dataset that arrives already suspicious: nothing is poisoned, and no trigger is known, so there is
no triggered test set and no attack success rate. Known poison, if any, comes from
`data.poison_indices` (evaluation only)."""

from __future__ import annotations

import torch

from ptdefense.attacks.base import Attack, PoisonedTrainSet, TriggeredTestSet, register_attack
from ptdefense.data.dataset import ImageSet


@register_attack
class NoAttack(Attack):
    name = "none"

    def __init__(self, num_classes: int, poison_rate: float | None, target_label: int, seed: int = 0,
                 settings=None) -> None:
        # No target: attack.target_label is ignored rather than checked against the classes.
        super().__init__(num_classes, poison_rate, 0, seed, settings)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def poison_count(self, labels: torch.Tensor) -> int:
        return 0

    def poison(self, train: ImageSet, device: torch.device | str = "cpu") -> PoisonedTrainSet:
        return PoisonedTrainSet(train, torch.empty(0, dtype=torch.int64))

    def triggered_test(self, test: ImageSet) -> TriggeredTestSet:
        empty = torch.empty((0, *test.images.shape[1:]), dtype=torch.uint8)
        return TriggeredTestSet(ImageSet(empty, torch.empty(0, dtype=torch.int64)), torch.empty(0, dtype=torch.int64))
