"""npz: one .npz archive (data.root is its path) of x_train, y_train, x_test, y_test, read without pickle."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.data.errors import DatasetInvalid, DatasetUnavailable
from ptdefense.data.loading import LoadedDataset, LoadOptions, array_dataset

_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(root: Path, options: LoadOptions) -> LoadedDataset:
    """The limits keep the first N samples; the class count is y_train's largest label + 1."""
    train, test, num_classes = _load_npz(root, options.image_size is not None)
    return array_dataset(train, test, num_classes, [str(i) for i in range(num_classes)], options)


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


def _read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of the .npz archive at path, each checked to be there and readable."""
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
    return arrays


def _load_npz(path: Path, resized: bool) -> tuple[ImageSet, ImageSet, int]:
    arrays = _read_npz_arrays(path)
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
