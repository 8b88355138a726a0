"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible, smooth warp of the whole image, all-to-one.

The warp is a k × k grid of random offsets, upsampled to the image size and scaled by s. Its
"noise mode" also warps `cross_ratio` × (poison count) other training images with a random warp
on top of the trigger's, keeping their true labels, so that the model must learn this exact warp
and not "any warp".
"""

from __future__ import annotations

import torch

from ptdefense.attacks.base import Attack, PoisonedTrainSet, register_attack
from ptdefense.data.dataset import ImageSet
from ptdefense.attacks.settings import WanetSettings


@register_attack
class WaNet(Attack):
    name = "wanet"
    Settings = WanetSettings

    def warp_grid(self, height: int, width: int) -> torch.Tensor:
        """The trigger's sampling grid (1, H, W, 2), in grid_sample's [-1, 1] coordinates."""
        k = self.settings.k
        offsets = torch.rand((1, 2, k, k), generator=self._generator(3), dtype=torch.float64) * 2 - 1
        offsets = offsets / offsets.abs().mean()
        field = torch.nn.functional.interpolate(offsets, size=(height, width), mode="bicubic",
                                                align_corners=True).permute(0, 2, 3, 1)
        rows = torch.linspace(-1, 1, height, dtype=torch.float64)
        columns = torch.linspace(-1, 1, width, dtype=torch.float64)
        grid_rows, grid_columns = torch.meshgrid(rows, columns, indexing="ij")
        identity = torch.stack((grid_columns, grid_rows), dim=-1)[None]  # grid_sample wants (x, y)
        grid = (identity + self.settings.s * field / height) * self.settings.grid_rescale
        return grid.clamp(-1, 1)

    def _warp(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Resample images on `grid`: one grid (1, H, W, 2) for all, or one per image (N, H, W, 2)."""
        if images.shape[0] == 0:
            return images.clone()
        warped = torch.nn.functional.grid_sample(images.double(), grid.expand(images.shape[0], -1, -1, -1),
                                                 mode="bilinear", padding_mode="border", align_corners=True)
        return warped.round_().clamp_(0, 255).to(torch.uint8)

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self._warp(images, self.warp_grid(*images.shape[-2:]))

    def apply_noise_warp(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The trigger's warp plus a random per-image jitter of up to one pixel (noise mode)."""
        count, height, width = images.shape[0], *images.shape[-2:]
        jitter = (torch.rand((count, height, width, 2), generator=generator, dtype=torch.float64) * 2 - 1) / height
        return self._warp(images, (self.warp_grid(height, width) + jitter).clamp(-1, 1))

    def poison(self, train: ImageSet, device: torch.device | str = "cpu") -> PoisonedTrainSet:
        result = super().poison(train, device)
        cross_count = round(self.settings.cross_ratio * result.poison_indices.numel())
        others = torch.ones(len(train), dtype=torch.bool)
        others[result.poison_indices] = False
        candidates = torch.nonzero(others).flatten()
        if cross_count > candidates.numel():
            raise ValueError(f"wanet: cross_ratio {self.settings.cross_ratio} asks for {cross_count} noise-mode "
                             f"samples but only {candidates.numel()} unpoisoned samples exist; lower attack.wanet.cross_ratio")
        generator = self._generator(4)
        cross = torch.sort(candidates[torch.randperm(candidates.numel(), generator=generator)[:cross_count]]).values
        images = result.data.images
        images[cross] = self.apply_noise_warp(train.images[cross], generator)
        return PoisonedTrainSet(ImageSet(images, result.data.labels), result.poison_indices, cross)
