"""A network expressed as an ordered sequence of named blocks.

`freeze_prefix(k)` freezes the first k blocks: their parameters stop requiring gradients, their
BatchNorm layers stay in eval mode (fixed statistics), and they run under no_grad, so their
backward pass is skipped rather than merely not applied.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class BlockNet(nn.Module):
    def __init__(self, blocks: "OrderedDict[str, nn.Module]") -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)
        self.frozen_prefix = 0

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    def freeze_prefix(self, count: int) -> None:
        if not 0 <= count < len(self.blocks):
            raise ValueError(
                f"freeze_layers={count} is out of range: this model has {len(self.blocks)} blocks "
                f"({', '.join(self.block_names)}); valid values: 0..{len(self.blocks) - 1}"
            )
        self.frozen_prefix = count
        for index, block in enumerate(self.blocks.values()):
            block.requires_grad_(index >= count)
        self.train(self.training)

    def frozen_blocks(self) -> list[nn.Module]:
        return list(self.blocks.values())[: self.frozen_prefix]

    def train(self, mode: bool = True) -> "BlockNet":
        super().train(mode)
        for block in self.frozen_blocks():
            block.eval()  # frozen BN keeps its statistics
        return self

    @torch.no_grad()
    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output: fixed for a given image, so a trainer may compute it once."""
        features = images
        for block in self.frozen_blocks():
            features = block(features)
        return features

    def forward_trainable(self, features: torch.Tensor) -> torch.Tensor:
        """The blocks after the frozen prefix, on the prefix's output."""
        for block in list(self.blocks.values())[self.frozen_prefix:]:
            features = block(features)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_trainable(self.frozen_features(images) if self.frozen_prefix else images)
