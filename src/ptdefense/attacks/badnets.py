"""BadNets (Gu et al., 2017): a small solid patch in the bottom-right corner, all-to-one, and its
all-to-all variant (label y → (y + 1) mod K)."""

from __future__ import annotations

import torch

from ptdefense.attacks.base import Attack, check_size, register_attack
from ptdefense.attacks.settings import PatchSettings


def stamp_corner_patch(images: torch.Tensor, patch_size: int, patch_value: int) -> torch.Tensor:
    check_size(images, patch_size, "patch_size")
    triggered = images.clone()
    triggered[..., -patch_size:, -patch_size:] = patch_value
    return triggered


@register_attack
class BadNets(Attack):
    name = "badnets"
    Settings = PatchSettings

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return stamp_corner_patch(images, self.settings.patch_size, self.settings.patch_value)


@register_attack
class BadNetsAllToAll(BadNets):
    """Every class is a victim: a triggered image of class y should be read as class y + 1."""

    name = "badnets_all2all"

    def attack_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels + 1) % self.num_classes
