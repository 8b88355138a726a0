"""BadNets (Gu et al., 2017): a small solid patch in the bottom-right corner, all-to-one."""

from __future__ import annotations

import torch

from ptdefense.attacks.base import Attack, register_attack


@register_attack
class BadNets(Attack):
    name = "badnets"

    def __init__(self, num_classes: int, poison_rate: float, target_label: int, seed: int = 0,
                 patch_size: int = 3, patch_value: int = 255) -> None:
        super().__init__(num_classes, poison_rate, target_label, seed)
        self.patch_size = patch_size
        self.patch_value = patch_value

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] < self.patch_size or images.shape[-2] < self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} exceeds the image size {tuple(images.shape[-2:])}")
        triggered = images.clone()
        triggered[..., -self.patch_size:, -self.patch_size:] = self.patch_value
        return triggered
