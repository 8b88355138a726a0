"""SIG (Barni et al., 2019): a horizontal sinusoid added to target-class images, clean-label.

x' = clip(x + Δ·sin(2π·j·f / m)), with j the column and m the image width; Δ in pixel units (0..255).
"""

from __future__ import annotations

import math

import torch

from ptdefense.attacks.base import Attack, register_attack
from ptdefense.attacks.settings import SigSettings


@register_attack
class Sig(Attack):
    name = "sig"
    clean_label = True
    Settings = SigSettings

    def signal(self, width: int) -> torch.Tensor:
        columns = torch.arange(width, dtype=torch.float64)
        return self.settings.delta * torch.sin(2 * math.pi * columns * self.settings.frequency / width)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        shifted = images.double() + self.signal(images.shape[-1])
        return shifted.round_().clamp_(0, 255).to(torch.uint8)
