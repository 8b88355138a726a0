"""Image files, as gtsrb and image folders hold them: headers, pixels, and a dataset of (file, label) samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.data.errors import DatasetInvalid
from ptdefense.data.loading import LoadedDataset, resize, seeded_subset

# PIL modes that hold one grey channel; everything else is read as RGB.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

# A sample: its file's path and its label.
Sample = tuple[str, int]


def _image_error(path: str | Path, problem: str) -> DatasetInvalid:
    return DatasetInvalid(f"{path}: {problem}; remove or replace it")


def image_header(path: str) -> tuple[str, tuple[int, int]]:
    """The PIL mode and (width, height) of an image file, from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except Exception as error:  # PIL raises many types on damaged files
        raise _image_error(path, f"unreadable image ({type(error).__name__}: {error})") from None


def _image_pixels(path: str, channels: int) -> np.ndarray:
    """The image's pixels as uint8 (C, H, W), grey (C=1) or RGB (C=3)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if channels == 3:
                pixels = np.asarray(image.convert("RGB"))
            elif mode.startswith("I;16") or mode == "I":
                values = np.asarray(image).astype(np.int64)
                if mode.startswith("I;16") or values.max(initial=0) > 255:
                    values = np.round(np.clip(values, 0, 65535) / 257.0)
                pixels = np.clip(values, 0, 255).astype(np.uint8)
            elif mode == "F":
                pixels = np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8)
            else:
                pixels = np.asarray(image.convert("L"))
    except Exception as error:  # truncated/corrupt data surfaces only here, as OSError/SyntaxError/...
        raise _image_error(path, f"unreadable image ({type(error).__name__}: {error})") from None
    if pixels.ndim == 2:
        pixels = pixels[None]
    else:
        pixels = pixels.transpose(2, 0, 1)
    return np.array(pixels, dtype=np.uint8, order="C")  # a writable copy


def read_images(paths: list[str], channels: int, size: int | None, first_size: tuple[int, int] | None) -> torch.Tensor:
    """Decode the files into one uint8 (N, C, S, S) tensor, resizing each to size × size if given."""
    if size is not None:
        height = width = size
    elif first_size is not None:
        width, height = first_size
    else:
        height = width = 1
    out = torch.empty((len(paths), channels, height, width), dtype=torch.uint8)
    for index, path in enumerate(paths):
        pixels = torch.from_numpy(_image_pixels(path, channels))
        out[index] = resize(pixels, size)
    return out


def limit_samples(samples: list[Sample], limit: int | None, seed: int, stream: int) -> list[Sample]:
    """A seeded random choice of `limit` samples, kept in stored order (stream: 1 for train, 2 for test)."""
    return [samples[i] for i in seeded_subset(len(samples), limit, seed, stream)]


def samples_dataset(root: Path, train_samples: list[Sample], test_samples: list[Sample], channels: int,
                    size: int | None, first_size: tuple[int, int] | None, class_names: list[str]) -> LoadedDataset:
    """Decode both splits' files; each sample's source is its file relative to root."""
    train = ImageSet(read_images([path for path, _ in train_samples], channels, size, first_size),
                     torch.tensor([label for _, label in train_samples], dtype=torch.int64))
    test = ImageSet(read_images([path for path, _ in test_samples], channels, size, first_size),
                    torch.tensor([label for _, label in test_samples], dtype=torch.int64))
    sources = [Path(path).relative_to(root).as_posix() for path, _ in train_samples]
    test_sources = [Path(path).relative_to(root).as_posix() for path, _ in test_samples]
    return LoadedDataset(train, test, len(class_names), class_names, sources, test_sources)
