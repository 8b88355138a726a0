"""Dataset loading: local files first, then torchvision's download for users with internet.

Every format module (ptdefense.data.formats) reads its dataset's own on-disk format and checks it as
it goes: a problem with the files raises `DatasetInvalid` naming the file (or array) and the fix, a
dataset that is not there raises `DatasetUnavailable` naming where it looked. Loading never writes
under `root`, except for torchvision's own download when a dataset is missing and `download` is on.

load_dataset checks the arguments and hands them, as one LoadOptions, to the loader that
`_format_loaders` names for the dataset. The helpers below are the ones several formats share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from ptdefense.data.catalogue import NUM_CLASSES, unknown_dataset
from ptdefense.data.dataset import ImageSet
from ptdefense.data.errors import DatasetInvalid, DatasetUnavailable


@dataclass(frozen=True)
class LoadedDataset:
    train: ImageSet
    test: ImageSet
    num_classes: int
    class_names: list[str]
    # Per training sample (after limits): its file, relative to the dataset root (image folders,
    # gtsrb); None for the array formats.
    train_sources: list[str] | None
    # The test samples' files likewise (a folder's test_split holds out training images, and a
    # list of known poison may name them).
    test_sources: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.train_sources is not None and len(self.train_sources) != len(self.train):
            raise ValueError(f"{len(self.train_sources)} train_sources for {len(self.train)} training samples")
        if self.train.image_shape != self.test.image_shape:
            raise DatasetInvalid(f"train images are {self.train.image_shape} but test images {self.test.image_shape}; "
                                 "give both splits one size, or set data.image_size")
        for split, labels in (("train", self.train.labels), ("test", self.test.labels)):
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise DatasetInvalid(f"{split} labels must lie in 0..{self.num_classes - 1}")


@dataclass(frozen=True)
class LoadOptions:
    """load_dataset's arguments after its checks, as every format loader receives them."""

    download: bool
    train_limit: int | None
    test_limit: int | None
    image_size: int | None
    test_split: float | None
    seed: int


# A format loader: (root, options) -> the loaded dataset.
FormatLoader = Callable[[Path, LoadOptions], LoadedDataset]


def _format_loaders() -> dict[str, FormatLoader]:
    """Each dataset name's loader. Imported here, on use: the format modules import this module's helpers."""
    from ptdefense.data.formats import cifar10, gtsrb, idx, imagefolder, npz

    return {
        "fashion_mnist": idx.load_fashion_mnist,
        "mnist": idx.load_mnist,
        "cifar10": cifar10.load_cifar10,
        "gtsrb": gtsrb.load_gtsrb,
        "imagefolder": imagefolder.load_image_folder,
        "npz": npz.load_npz,
    }


def load_dataset(name: str, root: Path, download: bool = True, train_limit: int | None = None,
                 test_limit: int | None = None, *, image_size: int | None = None,
                 test_split: float | None = None, seed: int = 0) -> LoadedDataset:
    """Load a dataset's train and test splits as uint8 (N, C, H, W) images with int64 labels.

    train_limit / test_limit keep the first N samples of the array formats (already shuffled) and
    a seeded random subset, in stored order, of gtsrb and image folders (stored class by class).
    image_size resizes every image to image_size × image_size (gtsrb: 32 when None). test_split
    (imagefolder only) holds out that share of each class of the training images as the test set.
    """
    if name not in NUM_CLASSES:
        raise unknown_dataset(name)
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit), ("image_size", image_size)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"{label} must be a positive integer or None, got {limit!r}")
    if test_split is not None:
        if name != "imagefolder":
            raise ValueError(f"test_split applies to imagefolder only, not {name!r}")
        if not 0.0 < float(test_split) < 1.0:
            raise ValueError(f"test_split must lie strictly between 0 and 1, got {test_split!r}")
    options = LoadOptions(download, train_limit, test_limit, image_size, test_split, seed)
    return _format_loaders()[name](Path(root), options)


# --- shared helpers -------------------------------------------------------------------------------

def take_first(images: ImageSet, limit: int | None) -> ImageSet:
    """The first `limit` samples (the array datasets are stored shuffled)."""
    if limit is None or limit >= len(images):
        return images
    return images.subset(torch.arange(limit))


def seeded_subset(count: int, limit: int | None, seed: int, stream: int) -> np.ndarray:
    """A seeded random choice of `limit` of `count` positions, kept in stored order."""
    if limit is None or limit >= count:
        return np.arange(count)
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(count, size=limit, replace=False))


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) or (C, H, W) images to size × size (bilinear, antialiased)."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    from torchvision.transforms.functional import InterpolationMode, resize as tv_resize

    if images.ndim == 3:
        return tv_resize(images, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    chunks = [tv_resize(chunk, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
              for chunk in images.split(1024)]
    return torch.cat(chunks) if chunks else images.new_zeros((0, images.shape[1], size, size))


def array_dataset(train: ImageSet, test: ImageSet, num_classes: int, class_names: list[str],
                  options: LoadOptions) -> LoadedDataset:
    """An array format's splits after the limits (first N) and image_size."""
    train, test = take_first(train, options.train_limit), take_first(test, options.test_limit)
    if options.image_size is not None:
        train = ImageSet(resize(train.images, options.image_size).contiguous(), train.labels)
        test = ImageSet(resize(test.images, options.image_size).contiguous(), test.labels)
    return LoadedDataset(train, test, num_classes, class_names, None)


def unavailable(title: str, looked: list[Path], download: bool, failure: BaseException | None,
                fix: str) -> DatasetUnavailable:
    """The error for a dataset found in none of `looked`, saying why the download did not help."""
    places = " or ".join(str(place) for place in looked)
    if not download:
        why = "download disabled"
    elif failure is not None:
        why = f"and the download failed ({type(failure).__name__})"
    else:
        why = "and the download left no readable copy there"
    if download:
        return DatasetUnavailable(f"{title} not found in {places}, {why}; {fix}")
    return DatasetUnavailable(f"{title} not found in {places} ({why}); {fix}")


def torchvision_download(class_name: str, root: Path, **splits) -> BaseException | None:
    """Run torchvision's own download of a dataset into root; the error it raised, or None."""
    try:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, class_name)
        root.mkdir(parents=True, exist_ok=True)
        for key, values in splits.items():
            for value in values:
                dataset_class(str(root), download=True, **{key: value})
    except Exception as error:  # torchvision raises bare URLError/RuntimeError/OSError subclasses
        return error
    return None
