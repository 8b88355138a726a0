"""Trojan-style trigger (after Liu et al., 2018): a fixed, non-square pattern stamped at a fixed place.

The Trojan attack reverse-engineers a watermark from a model; here the watermark is a diamond of
seeded random grey levels (a 5 × 5 box with its corners cut off) in the bottom-right corner.
"""

from __future__ import annotations

import torch

from ptdefense.attacks.base import Attack, check_size, register_attack
from ptdefense.attacks.settings import TrojanSettings


@register_attack
class Trojan(Attack):
    name = "trojan"
    Settings = TrojanSettings

    def mask(self) -> torch.Tensor:
        size = self.settings.size
        centre = (size - 1) / 2
        rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        return ((rows - centre).abs() + (columns - centre).abs()) <= centre

    def pattern(self, channels: int) -> torch.Tensor:
        # Extreme grey levels (0..63 or 192..255) so the watermark contrasts with any background.
        generator = self._generator(2)
        levels = torch.randint(0, 64, (channels, self.settings.size, self.settings.size), generator=generator)
        bright = torch.rand((channels, self.settings.size, self.settings.size), generator=generator) < 0.5
        return torch.where(bright, 255 - levels, levels).to(torch.uint8)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        size, margin = self.settings.size, self.settings.margin
        check_size(images, size + margin, "trojan size + margin")
        triggered = images.clone()
        height, width = images.shape[-2:]
        rows = slice(height - margin - size, height - margin)
        columns = slice(width - margin - size, width - margin)
        region = triggered[..., rows, columns]
        mask = self.mask()
        region[..., mask] = self.pattern(images.shape[1])[:, mask]  # broadcast over the batch
        return triggered
