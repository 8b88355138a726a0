"""Dataset loaders: local files first, then torchvision's download for users with internet."""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

import torch

from ptdefense.data.dataset import ImageSet

# Debian's package `dataset-fashion-mnist` installs the original gzip'd idx files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_NUM_CLASSES = {"fashion_mnist": 10}


class DatasetUnavailable(RuntimeError):
    """No local copy was found and the download failed (or was disabled)."""


def dataset_num_classes(name: str) -> int:
    try:
        return _NUM_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(_NUM_CLASSES)}") from None


def _find_idx(directory: Path, stem: str) -> Path | None:
    for sub in (directory, directory / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (sub / name).is_file():
                return sub / name
    return None


def _read_idx(path: Path, reader) -> torch.Tensor:
    """Parse an idx file with torchvision's reader, decompressing a .gz copy first."""
    if path.suffix != ".gz":
        return reader(str(path))
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / path.stem
        with gzip.open(path, "rb") as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target)
        return reader(str(plain))


def _load_idx_split(directory: Path, split: str) -> ImageSet | None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    image_stem, label_stem = _IDX_FILES[split]
    image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    if image_path is None or label_path is None:
        return None
    try:
        images = _read_idx(image_path, read_image_file)
        labels = _read_idx(label_path, read_label_file)
    except (AssertionError, OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError) as error:
        raise DatasetUnavailable(f"{image_path} / {label_path}: not valid idx files ({error or 'bad header'})") from None
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetUnavailable(
            f"{image_path} holds {tuple(images.shape)} images but {label_path} holds {tuple(labels.shape)} labels"
        )
    return ImageSet(images.unsqueeze(1).contiguous(), labels.to(torch.int64))


def load_fashion_mnist(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    for directory in (root, DEBIAN_FASHION_MNIST):
        train, test = _load_idx_split(directory, "train"), _load_idx_split(directory, "test")
        if train is not None and test is not None:
            return train, test
    if download:
        from torchvision.datasets import FashionMNIST

        try:
            train_set = FashionMNIST(str(root), train=True, download=True)
            test_set = FashionMNIST(str(root), train=False, download=True)
        except Exception as error:  # torchvision raises bare URLError/RuntimeError subclasses
            raise DatasetUnavailable(
                f"Fashion-MNIST not found in {root} or {DEBIAN_FASHION_MNIST}, and the download failed "
                f"({type(error).__name__}); install it with `apt-get install dataset-fashion-mnist` or put "
                f"the four idx(.gz) files in {root}"
            ) from None
        return (
            ImageSet(train_set.data.unsqueeze(1).contiguous(), train_set.targets.to(torch.int64)),
            ImageSet(test_set.data.unsqueeze(1).contiguous(), test_set.targets.to(torch.int64)),
        )
    raise DatasetUnavailable(
        f"Fashion-MNIST not found in {root} or {DEBIAN_FASHION_MNIST} (download disabled); install it with "
        f"`apt-get install dataset-fashion-mnist` or put the four idx(.gz) files in {root}"
    )


def _take_first(images: ImageSet, limit: int | None) -> ImageSet:
    """A class-balanced-ish subset: the first `limit` samples (the sets are already shuffled)."""
    if limit is None or limit >= len(images):
        return images
    return images.subset(torch.arange(limit))


def load_dataset(name: str, root: Path, download: bool = True, train_limit: int | None = None,
                 test_limit: int | None = None) -> tuple[ImageSet, ImageSet]:
    if name == "fashion_mnist":
        train, test = load_fashion_mnist(root, download)
    else:
        raise DatasetUnavailable(f"unknown dataset {name!r}; valid choices: {', '.join(_NUM_CLASSES)}")
    return _take_first(train, train_limit), _take_first(test, test_limit)
