"""CIFAR-10: the python pickle batches of cifar-10-python.tar.gz, unpickled safely (arrays only, no code)."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.data.errors import DatasetInvalid
from ptdefense.data.loading import LoadedDataset, LoadOptions, array_dataset, torchvision_download, unavailable

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct, scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct, scalar as _np_scalar  # type: ignore

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{number}" for number in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_META = "batches.meta"


def load_cifar10(root: Path, options: LoadOptions) -> LoadedDataset:
    train, test, class_names = _read_cifar10(root, options.download)
    return array_dataset(train, test, 10, class_names, options)


# --- the safe unpickler ---------------------------------------------------------------------------------

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


def safe_unpickle(path: Path, what: str, fix: str):
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


# --- the batches -------------------------------------------------------------------------------------------

def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _str_keys(obj, path: Path, what: str, fix: str) -> dict:
    if not isinstance(obj, dict):
        raise DatasetInvalid(f"{path}: holds a {type(obj).__name__}, not the dict of a {what}; {fix}")
    return {_text(key): value for key, value in obj.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = "replace it with the file from cifar-10-python.tar.gz"
    entries = _str_keys(safe_unpickle(path, "CIFAR-10 batch", fix), path, "CIFAR-10 batch", fix)
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
    entries = _str_keys(safe_unpickle(path, "CIFAR-10 batches.meta", fix), path, "CIFAR-10 batches.meta", fix)
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


def _read_cifar10(root: Path, download: bool) -> tuple[ImageSet, ImageSet, list[str]]:
    directory = _cifar_folder(root)
    if directory is not None:
        return _read_cifar_folder(directory)
    failure = None
    if download:
        failure = torchvision_download("CIFAR10", root, train=(True, False))
        directory = _cifar_folder(root)
        if failure is None and directory is not None:
            return _read_cifar_folder(directory)
    fix = (f"put {', '.join(_CIFAR_TRAIN)} and {_CIFAR_TEST} (and {_CIFAR_META}), from cifar-10-python.tar.gz, "
           f"in {root / _CIFAR_FOLDER}, or set data.root")
    raise unavailable("CIFAR-10", [root / _CIFAR_FOLDER, root], download, failure, fix)
