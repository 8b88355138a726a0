"""Dataset loaders: local files first, then torchvision's download for users with internet.

Every loader reads the dataset's own on-disk format and checks it as it goes: a problem with the
files raises `DatasetInvalid` naming the file (or array) and the fix, a dataset that is not there
raises `DatasetUnavailable` naming where it looked. Loading never writes under `root`, except for
torchvision's own download when a dataset is missing and `download` is on.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import os
import pickle
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptdefense.data.dataset import ImageSet

# Debian's package `dataset-fashion-mnist` installs the original gzip'd idx files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Fashion-MNIST's label names (Xiao et al., 2017), for the reports.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")

DATASET_NAMES = ("fashion_mnist", "mnist", "cifar10", "gtsrb", "imagefolder", "npz")

_NUM_CLASSES: dict[str, int | None] = {
    "fashion_mnist": 10, "mnist": 10, "cifar10": 10, "gtsrb": 43, "imagefolder": None, "npz": None,
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{number}" for number in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_META = "batches.meta"

GTSRB_CLASSES = 43
GTSRB_DEFAULT_SIZE = 32

# PIL modes that hold one grey channel; everything else is read as RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class DatasetError(RuntimeError):
    """A dataset could not be loaded; the message names the file or array and the fix."""


class DatasetUnavailable(DatasetError):
    """No local copy was found and the download failed (or was disabled)."""


class DatasetInvalid(DatasetError):
    """The files exist but are corrupt or inconsistent."""


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


def dataset_num_classes(name: str) -> int | None:
    """The number of classes of a named dataset; None where only loading tells (imagefolder, npz)."""
    try:
        return _NUM_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASET_NAMES)}") from None


def load_dataset(name: str, root: Path, download: bool = True, train_limit: int | None = None,
                 test_limit: int | None = None, *, image_size: int | None = None,
                 test_split: float | None = None, seed: int = 0) -> LoadedDataset:
    """Load a dataset's train and test splits as uint8 (N, C, H, W) images with int64 labels.

    train_limit / test_limit keep the first N samples of the array formats (already shuffled) and
    a seeded random subset, in stored order, of gtsrb and image folders (stored class by class).
    image_size resizes every image to image_size × image_size (gtsrb: 32 when None). test_split
    (imagefolder only) holds out that share of each class of the training images as the test set.
    """
    if name not in _NUM_CLASSES:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASET_NAMES)}")
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit), ("image_size", image_size)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"{label} must be a positive integer or None, got {limit!r}")
    if test_split is not None:
        if name != "imagefolder":
            raise ValueError(f"test_split applies to imagefolder only, not {name!r}")
        if not 0.0 < float(test_split) < 1.0:
            raise ValueError(f"test_split must lie strictly between 0 and 1, got {test_split!r}")
    root = Path(root)
    if name in ("fashion_mnist", "mnist"):
        train, test = _load_idx_dataset(name, root, download)
        names = FASHION_MNIST_CLASSES if name == "fashion_mnist" else [str(digit) for digit in range(10)]
        loaded = _array_dataset(train, test, 10, list(names), train_limit, test_limit, image_size)
    elif name == "cifar10":
        train, test, class_names = _load_cifar10(root, download)
        loaded = _array_dataset(train, test, 10, class_names, train_limit, test_limit, image_size)
    elif name == "npz":
        train, test, num_classes = _load_npz(root, image_size is not None)
        loaded = _array_dataset(train, test, num_classes, [str(i) for i in range(num_classes)], train_limit,
                                test_limit, image_size)
    elif name == "gtsrb":
        loaded = _load_gtsrb(root, download, train_limit, test_limit, image_size or GTSRB_DEFAULT_SIZE, seed)
    else:
        loaded = _load_image_folder(root, train_limit, test_limit, image_size, test_split, seed)
    return loaded


# --- shared helpers -------------------------------------------------------------------------------

def _take_first(images: ImageSet, limit: int | None) -> ImageSet:
    """The first `limit` samples (the array datasets are stored shuffled)."""
    if limit is None or limit >= len(images):
        return images
    return images.subset(torch.arange(limit))


def _seeded_subset(count: int, limit: int | None, seed: int, stream: int) -> np.ndarray:
    """A seeded random choice of `limit` of `count` positions, kept in stored order."""
    if limit is None or limit >= count:
        return np.arange(count)
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(count, size=limit, replace=False))


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) or (C, H, W) images to size × size (bilinear, antialiased)."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    from torchvision.transforms.functional import InterpolationMode, resize

    if images.ndim == 3:
        return resize(images, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    chunks = [resize(chunk, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
              for chunk in images.split(1024)]
    return torch.cat(chunks) if chunks else images.new_zeros((0, images.shape[1], size, size))


def _array_dataset(train: ImageSet, test: ImageSet, num_classes: int, class_names: list[str],
                   train_limit: int | None, test_limit: int | None, image_size: int | None) -> LoadedDataset:
    train, test = _take_first(train, train_limit), _take_first(test, test_limit)
    if image_size is not None:
        train = ImageSet(_resize(train.images, image_size).contiguous(), train.labels)
        test = ImageSet(_resize(test.images, image_size).contiguous(), test.labels)
    return LoadedDataset(train, test, num_classes, class_names, None)


def _unavailable(title: str, looked: list[Path], download: bool, failure: BaseException | None,
                 fix: str) -> DatasetUnavailable:
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


def _torchvision_download(class_name: str, root: Path, **splits) -> BaseException | None:
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


# --- idx: MNIST and Fashion-MNIST ---------------------------------------------------------------------

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
    places = [root, DEBIAN_FASHION_MNIST] if fashion else [root]
    for directory in places:
        train = _load_idx_split(directory, "train", subfolder)
        test = _load_idx_split(directory, "test", subfolder)
        if train is not None and test is not None:
            return train, test
    failure = None
    if download:
        failure = _torchvision_download("FashionMNIST" if fashion else "MNIST", root, train=(True, False))
        if failure is None:
            train, test = _load_idx_split(root, "train", subfolder), _load_idx_split(root, "test", subfolder)
            if train is not None and test is not None:
                return train, test
    files = ", ".join(stem for pair in _IDX_FILES.values() for stem in pair)
    if fashion:
        fix = (f"install it with `apt-get install dataset-fashion-mnist` or put the four idx(.gz) files "
               f"({files}) in {root} or {root}/{subfolder}/raw, or set data.root")
        raise _unavailable("Fashion-MNIST", places, download, failure, fix)
    fix = f"put the four idx(.gz) files ({files}) in {root} or {root}/{subfolder}/raw, or set data.root"
    raise _unavailable("MNIST", places, download, failure, fix)


# --- CIFAR-10: python pickle batches ------------------------------------------------------------------

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct, scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct, scalar as _np_scalar  # type: ignore

# The only globals a pickle of dicts, lists and numpy arrays needs (py2 and py3 writers).
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global (no code runs)."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"persistent id {pid!r}")


def _safe_unpickle(path: Path, what: str, fix: str):
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(handle, encoding="bytes").load()
    except _RefusedGlobal as refused:
        raise DatasetInvalid(
            f"{path}: refused to unpickle {refused} (a genuine {what} holds only numpy arrays, lists and dicts; "
            f"this file may try to run code); {fix}"
        ) from None
    except Exception as error:  # pickle raises many types on damaged input
        raise DatasetInvalid(f"{path}: not a readable {what} ({type(error).__name__}: {error}); {fix}") from None


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _str_keys(obj, path: Path, what: str, fix: str) -> dict:
    if not isinstance(obj, dict):
        raise DatasetInvalid(f"{path}: holds a {type(obj).__name__}, not the dict of a {what}; {fix}")
    return {_text(key): value for key, value in obj.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = "replace it with the file from cifar-10-python.tar.gz"
    entries = _str_keys(_safe_unpickle(path, "CIFAR-10 batch", fix), path, "CIFAR-10 batch", fix)
    missing = [key for key in ("data", "labels") if key not in entries]
    if missing:
        raise DatasetInvalid(f"{path}: lacks the key(s) {missing} (has {sorted(entries)}); {fix}")
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetInvalid(f"{path}: data must be a uint8 array of shape (N, 3072), got {described}; {fix}")
    labels = np.asarray(entries["labels"])
    if labels.size == 0:
        labels = np.zeros(0, dtype=np.int64)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DatasetInvalid(f"{path}: labels must be a list of integers, got {labels.dtype} {labels.shape}; {fix}")
    if labels.shape[0] != data.shape[0]:
        raise DatasetInvalid(f"{path}: holds {data.shape[0]} images but {labels.shape[0]} labels; {fix}")
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        bad = int(labels[(labels < 0) | (labels >= 10)][0])
        raise DatasetInvalid(f"{path}: holds the label {bad}, outside 0..9; {fix}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_meta(path: Path) -> list[str]:
    fix = "replace it with the file from cifar-10-python.tar.gz, or delete it (class names become 0..9)"
    entries = _str_keys(_safe_unpickle(path, "CIFAR-10 batches.meta", fix), path, "CIFAR-10 batches.meta", fix)
    names = entries.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetInvalid(f"{path}: label_names must be a list of 10 names; {fix}")
    return [_text(name) for name in names]


def _cifar_folder(root: Path) -> Path | None:
    for directory in (root / _CIFAR_FOLDER, root):
        if all((directory / name).is_file() for name in (*_CIFAR_TRAIN, _CIFAR_TEST)):
            return directory
    return None


def _read_cifar_folder(directory: Path) -> tuple[ImageSet, ImageSet, list[str]]:
    batches = [_read_cifar_batch(directory / name) for name in _CIFAR_TRAIN]
    images, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    test_images, test_labels = _read_cifar_batch(directory / _CIFAR_TEST)
    meta = directory / _CIFAR_META
    class_names = _read_cifar_meta(meta) if meta.is_file() else [str(i) for i in range(10)]
    return (ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)),
            ImageSet(torch.from_numpy(np.ascontiguousarray(test_images)), torch.from_numpy(test_labels)),
            class_names)


def _load_cifar10(root: Path, download: bool) -> tuple[ImageSet, ImageSet, list[str]]:
    directory = _cifar_folder(root)
    if directory is not None:
        return _read_cifar_folder(directory)
    failure = None
    if download:
        failure = _torchvision_download("CIFAR10", root, train=(True, False))
        directory = _cifar_folder(root)
        if failure is None and directory is not None:
            return _read_cifar_folder(directory)
    fix = (f"put {', '.join(_CIFAR_TRAIN)} and {_CIFAR_TEST} (and {_CIFAR_META}), from cifar-10-python.tar.gz, "
           f"in {root / _CIFAR_FOLDER}, or set data.root")
    raise _unavailable("CIFAR-10", [root / _CIFAR_FOLDER, root], download, failure, fix)


# --- image files ------------------------------------------------------------------------------------

def _image_error(path: str | Path, problem: str) -> DatasetInvalid:
    return DatasetInvalid(f"{path}: {problem}; remove or replace it")


def _image_header(path: str) -> tuple[str, tuple[int, int]]:
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


def _read_images(paths: list[str], channels: int, size: int | None, first_size: tuple[int, int] | None) -> torch.Tensor:
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
        out[index] = _resize(pixels, size)
    return out


# --- GTSRB ----------------------------------------------------------------------------------------------

def _gtsrb_parts(base: Path) -> tuple[Path, Path, Path]:
    return base / "GTSRB" / "Training", base / "GTSRB" / "Final_Test" / "Images", base / "GT-final_test.csv"


def _gtsrb_base(root: Path) -> Path | None:
    for base in (root / "gtsrb", root):
        if all(part.exists() for part in _gtsrb_parts(base)):
            return base
    return None


def _read_gtsrb_csv(path: Path) -> list[tuple[int, str, int]]:
    """(line number, Filename, ClassId) of each row of a GTSRB ground-truth CSV."""
    fix = "fix or replace it (columns Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId)"
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=";", skipinitialspace=True)
            missing = [column for column in ("Filename", "ClassId") if column not in (reader.fieldnames or [])]
            if missing:
                raise DatasetInvalid(f"{path}: lacks the column(s) {', '.join(missing)} "
                                     f"(has {';'.join(reader.fieldnames or []) or 'nothing'}); {fix}")
            for row in reader:
                filename, class_id = (row.get("Filename") or "").strip(), (row.get("ClassId") or "").strip()
                try:
                    label = int(class_id)
                except ValueError:
                    raise DatasetInvalid(f"{path}: line {reader.line_num}: ClassId {class_id!r} is not an integer; "
                                         f"{fix}") from None
                if not 0 <= label < GTSRB_CLASSES:
                    raise DatasetInvalid(f"{path}: line {reader.line_num}: ClassId {label} is outside "
                                         f"0..{GTSRB_CLASSES - 1}; {fix}")
                if not filename or Path(filename).name != filename:
                    raise DatasetInvalid(f"{path}: line {reader.line_num}: Filename {filename!r} must be a bare file "
                                         f"name; {fix}")
                rows.append((reader.line_num, filename, label))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetInvalid(f"{path}: not a readable CSV ({error}); {fix}") from None
    return rows


def _gtsrb_train_samples(train_dir: Path) -> list[tuple[str, int]]:
    folders = sorted(entry for entry in train_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise DatasetInvalid(f"{train_dir} holds no class folders (00000 … {GTSRB_CLASSES - 1:05d}); "
                             f"put each class's .ppm images in {train_dir}/<ClassId, 5 digits>/")
    samples = []
    for folder in folders:
        if not folder.name.isdigit() or int(folder.name) >= GTSRB_CLASSES:
            raise DatasetInvalid(f"{folder}: GTSRB class folders are named 00000 … {GTSRB_CLASSES - 1:05d} "
                                 f"(ClassId 0..{GTSRB_CLASSES - 1}); remove or rename it")
        label = int(folder.name)
        files = sorted(entry.name for entry in folder.iterdir()
                       if entry.is_file() and entry.suffix.lower() == ".ppm" and not entry.name.startswith("."))
        if not files:
            raise DatasetInvalid(f"{folder} holds no images with extensions .ppm; add the class's images or "
                                 f"remove the folder")
        ground_truth = folder / f"GT-{folder.name}.csv"
        if ground_truth.is_file():
            for line, filename, class_id in _read_gtsrb_csv(ground_truth):
                if not (folder / filename).is_file():
                    raise DatasetInvalid(f"{ground_truth}: line {line} names {filename}, which is not in {folder}; "
                                         f"restore the file or remove the line")
                if class_id != label:
                    raise DatasetInvalid(f"{ground_truth}: line {line} gives {filename} ClassId {class_id}, but it "
                                         f"lies in the class folder {folder.name} (ClassId {label}); fix the CSV or "
                                         f"move the file")
        samples.extend((str(folder / name), label) for name in files)
    return samples


def _gtsrb_test_samples(test_dir: Path, test_csv: Path) -> list[tuple[str, int]]:
    samples = []
    for line, filename, label in _read_gtsrb_csv(test_csv):
        if not (test_dir / filename).is_file():
            raise DatasetInvalid(f"{test_csv}: line {line} names {filename}, which is not in {test_dir}; restore "
                                 f"the file or remove the line")
        samples.append((str(test_dir / filename), label))
    if not samples:
        raise DatasetInvalid(f"{test_csv} lists no test images; replace it with GT-final_test.csv from "
                             f"GTSRB_Final_Test_GT.zip")
    return samples


def _load_gtsrb(root: Path, download: bool, train_limit: int | None, test_limit: int | None, size: int,
                seed: int) -> LoadedDataset:
    base = _gtsrb_base(root)
    failure = None
    if base is None and download:
        failure = _torchvision_download("GTSRB", root, split=("train", "test"))
        base = _gtsrb_base(root) if failure is None else None
    if base is None:
        near = root if (root / "GTSRB").is_dir() and not (root / "gtsrb").is_dir() else root / "gtsrb"
        layout = [part.relative_to(near).as_posix() for part in _gtsrb_parts(near)]
        missing = [str(part) for part in _gtsrb_parts(near) if not part.exists()]
        fix = (f"put {layout[0]}/<00000…00042>/*.ppm, {layout[1]}/*.ppm and {layout[2]} in {root / 'gtsrb'} "
               f"(missing: {', '.join(missing)}), or set data.root")
        raise _unavailable("GTSRB", [root / "gtsrb", root], download, failure, fix)
    train_dir, test_dir, test_csv = _gtsrb_parts(base)
    train_samples = _gtsrb_train_samples(train_dir)
    test_samples = _gtsrb_test_samples(test_dir, test_csv)
    train_samples = [train_samples[i] for i in _seeded_subset(len(train_samples), train_limit, seed, 1)]
    test_samples = [test_samples[i] for i in _seeded_subset(len(test_samples), test_limit, seed, 2)]
    train = ImageSet(_read_images([path for path, _ in train_samples], 3, size, None),
                     torch.tensor([label for _, label in train_samples], dtype=torch.int64))
    test = ImageSet(_read_images([path for path, _ in test_samples], 3, size, None),
                    torch.tensor([label for _, label in test_samples], dtype=torch.int64))
    sources = [Path(path).relative_to(root).as_posix() for path, _ in train_samples]
    test_sources = [Path(path).relative_to(root).as_posix() for path, _ in test_samples]
    return LoadedDataset(train, test, GTSRB_CLASSES, [str(i) for i in range(GTSRB_CLASSES)], sources, test_sources)


# --- image folders (torchvision's ImageFolder layout) ------------------------------------------------------

def _class_folders(directory: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith("."))


def _folder_samples(directory: Path, classes: list[str]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

    def is_image(path: str) -> bool:
        return has_file_allowed_extension(path, IMG_EXTENSIONS) and not os.path.basename(path).startswith(".")

    samples = make_dataset(str(directory), {name: i for i, name in enumerate(classes)}, is_valid_file=is_image,
                           allow_empty=True)
    present = {label for _, label in samples}
    for label, name in enumerate(classes):
        if label not in present:
            raise DatasetInvalid(f"{directory / name} holds no images with extensions {', '.join(IMG_EXTENSIONS)}; "
                                 f"add images or remove the folder")
    return samples


def _stratified_split(labels: list[int], share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `share` of each class (at least one image, never all of them), seeded."""
    rng = np.random.default_rng([seed, 0])
    labels_array = np.asarray(labels)
    held = []
    for label in np.unique(labels_array):
        members = np.flatnonzero(labels_array == label)
        count = len(members)
        take = min(max(int(round(share * count)), 1), count - 1) if count >= 2 else 0
        held.append(rng.permutation(members)[:take])
    test = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def _load_image_folder(root: Path, train_limit: int | None, test_limit: int | None, image_size: int | None,
                       test_split: float | None, seed: int) -> LoadedDataset:
    layout = (f"put one folder of images per class in {root}/train/<class>/ and {root}/test/<class>/ "
              f"(or in {root}/<class>/ with data.test_split), or set data.root")
    if not root.is_dir():
        raise DatasetUnavailable(f"image folder {root} not found (imagefolder is never downloaded); {layout}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        train_dir = root
        if (root / "test").is_dir():
            raise DatasetInvalid(f"{root / 'test'} exists but {root / 'train'} does not; put the training class "
                                 f"folders in {root}/train/<class>/")
    classes = _class_folders(train_dir)
    if not classes:
        if train_dir == root:
            raise DatasetUnavailable(f"image folder {root} holds no class folders; {layout}")
        raise DatasetInvalid(f"{train_dir} holds no class folders; put each class's images in {train_dir}/<class>/")
    samples = _folder_samples(train_dir, classes)
    if test_split is not None:
        train_index, test_index = _stratified_split([label for _, label in samples], float(test_split), seed)
        if len(test_index) == 0:
            raise DatasetInvalid(f"{train_dir}: every class holds a single image, so data.test_split has nothing "
                                 f"to hold out; add images or a {root}/test/<class>/ split")
        train_samples = [samples[i] for i in train_index]
        test_samples = [samples[i] for i in test_index]
    else:
        test_dir = root / "test"
        if not test_dir.is_dir():
            raise DatasetInvalid(f"{root} has no test split: add {test_dir}/<class>/… or set data.test_split")
        test_classes = _class_folders(test_dir)
        extra = [name for name in test_classes if name not in classes]
        if extra:
            raise DatasetInvalid(f"{test_dir / extra[0]} has no matching class folder in {train_dir} (training "
                                 f"classes: {', '.join(classes)}); rename or remove it, or add {train_dir / extra[0]}/")
        missing = [name for name in classes if name not in test_classes]
        if missing:
            raise DatasetInvalid(f"{test_dir} lacks the class folder(s) {', '.join(missing)} that {train_dir} has; "
                                 f"add {test_dir / missing[0]}/ with test images, or set data.test_split")
        train_samples, test_samples = samples, _folder_samples(test_dir, classes)
    train_samples = [train_samples[i] for i in _seeded_subset(len(train_samples), train_limit, seed, 1)]
    test_samples = [test_samples[i] for i in _seeded_subset(len(test_samples), test_limit, seed, 2)]

    # Headers first: the channel count and (without image_size) the one shared size.
    headers = [(path, *_image_header(path)) for path, _ in train_samples + test_samples]
    channels = 1 if all(mode in _GRAY_MODES for _, mode, _ in headers) else 3
    first_path, _, first_size = headers[0]
    if image_size is None:
        for path, _, size in headers:
            if size != first_size:
                raise DatasetInvalid(
                    f"images differ in size: {first_path} is {first_size[0]}x{first_size[1]} but {path} is "
                    f"{size[0]}x{size[1]} (width x height); set data.image_size to resize them all"
                )
    train = ImageSet(_read_images([path for path, _ in train_samples], channels, image_size, first_size),
                     torch.tensor([label for _, label in train_samples], dtype=torch.int64))
    test = ImageSet(_read_images([path for path, _ in test_samples], channels, image_size, first_size),
                    torch.tensor([label for _, label in test_samples], dtype=torch.int64))
    sources = [Path(path).relative_to(root).as_posix() for path, _ in train_samples]
    test_sources = [Path(path).relative_to(root).as_posix() for path, _ in test_samples]
    return LoadedDataset(train, test, len(classes), list(classes), sources, test_sources)


# --- npz: x_train, y_train, x_test, y_test ------------------------------------------------------------------

_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_images(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """Validate an x array and return it as (N, C, H, W)."""
    if x.dtype != np.uint8:
        raise DatasetInvalid(
            f"{path}: {name} has dtype {x.dtype} but images must be uint8 (0..255); convert floats in [0, 1] with "
            f"(x * 255).round().astype(np.uint8), integers in 0..255 with x.astype(np.uint8)"
        )
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = ""
        if x.ndim == 4 and x.shape[1] in (1, 3):
            hint = " (it looks channels-first: store channels-last with x.transpose(0, 2, 3, 1))"
        raise DatasetInvalid(f"{path}: {name} has shape {x.shape} but must be (N, H, W) or (N, H, W, C) with C "
                             f"1 or 3{hint}")
    if x.shape[0] == 0:
        raise DatasetInvalid(f"{path}: {name} holds no images")
    return x.transpose(0, 3, 1, 2)


def _npz_labels(path: Path, name: str, y: np.ndarray, count: int, x_name: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DatasetInvalid(f"{path}: {name} has dtype {y.dtype} but labels must be integers 0..K-1; convert with "
                             f"y.astype(np.int64)")
    if y.ndim != 1:
        raise DatasetInvalid(f"{path}: {name} has shape {y.shape} but labels must be 1-D (N,): flatten with "
                             f"y.reshape(-1), or y.argmax(1) for one-hot labels")
    if y.shape[0] != count:
        raise DatasetInvalid(f"{path}: {x_name} holds {count} images but {name} holds {y.shape[0]} labels; "
                             f"save one label per image")
    if (y < 0).any():
        index = int(np.flatnonzero(y < 0)[0])
        raise DatasetInvalid(f"{path}: {name} holds the negative label {int(y[index])} (index {index}); labels "
                             f"must be 0..K-1")
    if int(y.max()) > np.iinfo(np.int64).max:
        raise DatasetInvalid(f"{path}: {name} holds the label {int(y.max())}; labels must be 0..K-1")
    return y.astype(np.int64)


def _load_npz(path: Path, resized: bool) -> tuple[ImageSet, ImageSet, int]:
    saving = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    if path.is_dir():
        raise DatasetInvalid(f"{path} is a folder, but for npz data.root must be the path of an .npz file "
                             f"saved with {saving}")
    if not path.is_file():
        raise DatasetUnavailable(f"{path} not found (npz is never downloaded); save x_train, y_train, x_test, "
                                 f"y_test there with {saving}, or set data.root to the .npz file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            npy = handle.read(6) == b"\x93NUMPY"
        problem = "holds a single .npy array" if npy else "is not a zip file"
        raise DatasetInvalid(f"{path} is not an .npz archive (it {problem}); write it with {saving}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetInvalid(f"{path} is not a readable .npz archive ({type(error).__name__}); write it with "
                             f"{saving}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetInvalid(f"{path} is not an .npz archive; write it with {saving}")
    arrays = {}
    with archive:
        missing = [name for name in _NPZ_ARRAYS if name not in archive.files]
        if missing:
            raise DatasetInvalid(f"{path} lacks the array(s) {', '.join(missing)} (it holds: "
                                 f"{', '.join(archive.files) or 'nothing'}); write all four with {saving}")
        for name in _NPZ_ARRAYS:
            try:
                arrays[name] = archive[name]
            except ValueError as error:
                if "allow_pickle" in str(error):
                    raise DatasetInvalid(f"{path}: {name} is an object array (pickled Python objects), which is "
                                         f"never unpickled; save it as a plain numeric array") from None
                raise DatasetInvalid(f"{path}: {name} is unreadable ({error}); write it again with {saving}") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
                raise DatasetInvalid(f"{path}: {name} is unreadable ({error}); write it again with {saving}") from None
    x_train, x_test = _npz_images(path, "x_train", arrays["x_train"]), _npz_images(path, "x_test", arrays["x_test"])
    y_train = _npz_labels(path, "y_train", arrays["y_train"], x_train.shape[0], "x_train")
    y_test = _npz_labels(path, "y_test", arrays["y_test"], x_test.shape[0], "x_test")
    train_shape, test_shape = arrays["x_train"].shape[1:], arrays["x_test"].shape[1:]
    same = x_train.shape[1] == x_test.shape[1] if resized else x_train.shape[1:] == x_test.shape[1:]
    if not same:
        raise DatasetInvalid(f"{path}: x_train images are {train_shape} but x_test images are {test_shape}; all "
                             f"images must share one shape (and channel count)")
    num_classes = int(y_train.max()) + 1
    if int(y_test.max()) >= num_classes:
        index = int(np.flatnonzero(y_test >= num_classes)[0])
        raise DatasetInvalid(f"{path}: y_test holds the label {int(y_test[index])} (index {index}) but y_train's "
                             f"labels are 0..{num_classes - 1}, so there are {num_classes} classes; every test "
                             f"label must be one of them")
    return (ImageSet(torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train)),
            ImageSet(torch.from_numpy(np.ascontiguousarray(x_test)), torch.from_numpy(y_test)),
            num_classes)
