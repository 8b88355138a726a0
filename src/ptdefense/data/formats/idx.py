"""idx files: MNIST and Fashion-MNIST (the four idx files, plain or gzip'd)."""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from pathlib import Path

import torch

from ptdefense.data.catalogue import FASHION_MNIST_CLASSES
from ptdefense.data.dataset import ImageSet
from ptdefense.data.errors import DatasetInvalid
from ptdefense.data.loading import LoadedDataset, LoadOptions, array_dataset, torchvision_download, unavailable

# Debian's package `dataset-fashion-mnist` installs the original gzip'd idx files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_fashion_mnist(root: Path, options: LoadOptions) -> LoadedDataset:
    train, test = _load_idx_dataset("fashion_mnist", root, options.download)
    return array_dataset(train, test, 10, list(FASHION_MNIST_CLASSES), options)


def load_mnist(root: Path, options: LoadOptions) -> LoadedDataset:
    train, test = _load_idx_dataset("mnist", root, options.download)
    return array_dataset(train, test, 10, [str(digit) for digit in range(10)], options)


def _find_idx(directory: Path, stem: str, subfolder: str) -> Path | None:
    for sub in (directory, directory / subfolder / "raw"):
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


def _load_idx_split(directory: Path, split: str, subfolder: str = "FashionMNIST") -> ImageSet | None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    image_stem, label_stem = _IDX_FILES[split]
    image_path = _find_idx(directory, image_stem, subfolder)
    label_path = _find_idx(directory, label_stem, subfolder)
    if image_path is None or label_path is None:
        return None
    fix = "replace them with the original idx(.gz) files"
    try:
        images = _read_idx(image_path, read_image_file)
        labels = _read_idx(label_path, read_label_file)
    except (AssertionError, OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, IndexError,
            zlib.error) as error:
        raise DatasetInvalid(
            f"{image_path} / {label_path}: not valid idx files ({error or 'bad header'}); {fix}"
        ) from None
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetInvalid(
            f"{image_path} holds {tuple(images.shape)} images but {label_path} holds {tuple(labels.shape)} "
            f"labels; {fix}"
        )
    if labels.numel() and int(labels.max()) >= 10:
        raise DatasetInvalid(f"{label_path} holds the label {int(labels.max())}, outside 0..9; {fix}")
    return ImageSet(images.unsqueeze(1).contiguous(), labels.to(torch.int64))


def _load_idx_dataset(name: str, root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    fashion = name == "fashion_mnist"
    subfolder = "FashionMNIST" if fashion else "MNIST"
    # Read at call time, so that tests can point it elsewhere.
    places = [root, DEBIAN_FASHION_MNIST] if fashion else [root]
    for directory in places:
        train = _load_idx_split(directory, "train", subfolder)
        test = _load_idx_split(directory, "test", subfolder)
        if train is not None and test is not None:
            return train, test
    failure = None
    if download:
        failure = torchvision_download("FashionMNIST" if fashion else "MNIST", root, train=(True, False))
        if failure is None:
            train, test = _load_idx_split(root, "train", subfolder), _load_idx_split(root, "test", subfolder)
            if train is not None and test is not None:
                return train, test
    files = ", ".join(stem for pair in _IDX_FILES.values() for stem in pair)
    if fashion:
        fix = (f"install it with `apt-get install dataset-fashion-mnist` or put the four idx(.gz) files "
               f"({files}) in {root} or {root}/{subfolder}/raw, or set data.root")
        raise unavailable("Fashion-MNIST", places, download, failure, fix)
    fix = f"put the four idx(.gz) files ({files}) in {root} or {root}/{subfolder}/raw, or set data.root"
    raise unavailable("MNIST", places, download, failure, fix)
