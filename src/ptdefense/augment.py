"""Training-time augmentation, drawn from the training loop's own seeded generator.

`crop_flip` is the standard CIFAR recipe (BackdoorBench's among them): pad 4 pixels of zeros,
crop back to the original size at a random offset, and flip horizontally with probability 1/2,
each sample on its own. torchvision's transform classes draw from torch's global RNG; here the
offsets and flips come from the generator that also orders the batches, so a fixed seed gives the
same augmented batches, and a resumed run continues the same sequence.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

AUGMENTATIONS = ("none", "crop_flip")
CROP_PADDING = 4


def augment_batch(images: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, C, H, W) images, augmented as `name` says (a new tensor; `images` is untouched)."""
    if name == "none":
        return images
    if name != "crop_flip":
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    count, _, height, width = images.shape
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (count, 2), generator=generator).tolist()
    flips = (torch.rand(count, generator=generator) < 0.5).tolist()
    padded = TF.pad(images, [CROP_PADDING])
    out = []
    for image, (top, left), flip in zip(padded, offsets, flips):
        cropped = TF.crop(image, top, left, height, width)
        out.append(TF.horizontal_flip(cropped) if flip else cropped)
    return torch.stack(out)
