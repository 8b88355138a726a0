"""Blend (Chen et al., 2017): a fixed full-image pattern mixed in at opacity α.

The benchmarks blend a "hello kitty" photo; nothing may be downloaded here, so the pattern is
uniform noise drawn once from the attack's seed (the same pattern for training and test).
"""

from __future__ import annotations

import torch

from ptdefense.attacks.base import Attack, blend_uint8, register_attack
from ptdefense.attacks.settings import BlendSettings


@register_attack
class Blend(Attack):
    name = "blend"
    Settings = BlendSettings

    def pattern(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=self._generator(1))

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return blend_uint8(images, self.pattern(tuple(images.shape[1:])), self.settings.alpha)
