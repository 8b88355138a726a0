"""load_dataset on tiny files in each dataset's real on-disk format, and on broken ones."""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import InterpolationMode, resize

from payloads import EvalsMarker, TouchesMarker
from ptdefense.data.catalogue import DATASET_NAMES, dataset_num_classes
from ptdefense.data.errors import DatasetError, DatasetInvalid, DatasetUnavailable
from ptdefense.data.formats import idx
from ptdefense.data.loading import LoadedDataset, load_dataset


@pytest.fixture(autouse=True)
def no_system_copy(tmp_path, monkeypatch):
    """Never fall back to a Fashion-MNIST installed on this machine, never reach the network."""
    empty = tmp_path / "no-debian-copy"
    empty.mkdir()
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", empty)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_network)
    return empty


def listing(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


def rand_images(n: int, shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# --- interface ---------------------------------------------------------------------------------------------

def test_names_and_num_classes():
    assert DATASET_NAMES == ("fashion_mnist", "mnist", "cifar10", "gtsrb", "imagefolder", "npz")
    assert [dataset_num_classes(name) for name in DATASET_NAMES] == [10, 10, 10, 43, None, None]
    with pytest.raises(ValueError) as info:
        dataset_num_classes("svhn")
    assert all(name in str(info.value) for name in DATASET_NAMES)
    with pytest.raises(ValueError, match="imagefolder"):
        load_dataset("svhn", Path("/nonexistent"), download=False)
    assert issubclass(DatasetInvalid, DatasetError) and issubclass(DatasetUnavailable, DatasetError)
    assert issubclass(DatasetError, RuntimeError)


def test_every_catalogued_dataset_has_a_format_loader():
    from ptdefense.data import loading

    assert tuple(loading._format_loaders()) == DATASET_NAMES


def test_catalogue_and_errors_import_without_torch():
    """The params schema reads the catalogue before any heavy import; ImageSet needs no loader."""
    import subprocess
    import sys

    code = ("import sys; import ptdefense.data.catalogue, ptdefense.data.errors; "
            "assert not {'torch', 'numpy'} & set(sys.modules), sorted(sys.modules); "
            "import ptdefense.data.dataset; "
            "assert not {'torchvision', 'ptdefense.data.loading'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_test_split_only_for_image_folders(tmp_path):
    with pytest.raises(ValueError, match="imagefolder"):
        load_dataset("npz", tmp_path / "x.npz", download=False, test_split=0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_dataset("imagefolder", tmp_path, download=False, test_split=1.5)


# --- MNIST idx ---------------------------------------------------------------------------------------------

def idx3(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", 2051, *images.shape) + images.tobytes()


def idx1(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, labels.shape[0]) + labels.tobytes()


def write_bytes(path: Path, payload: bytes, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(directory: Path, gz: bool, n_train: int = 9, n_test: int = 5, test_labels=None):
    rng = np.random.default_rng(3)
    train = rand_images(n_train, (28, 28), 1), rng.integers(0, 10, n_train).astype(np.uint8)
    test = rand_images(n_test, (28, 28), 2), (rng.integers(0, 10, n_test).astype(np.uint8)
                                              if test_labels is None else test_labels)
    write_bytes(directory / "train-images-idx3-ubyte", idx3(train[0]), gz)
    write_bytes(directory / "train-labels-idx1-ubyte", idx1(train[1]), gz)
    write_bytes(directory / "t10k-images-idx3-ubyte", idx3(test[0]), gz)
    write_bytes(directory / "t10k-labels-idx1-ubyte", idx1(test[1]), gz)
    return train, test


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_roundtrip(tmp_path, gz, layout):
    root = tmp_path / "raw"
    train, test = write_mnist(root if layout == "flat" else root / "MNIST" / "raw", gz)
    before = listing(root)
    loaded = load_dataset("mnist", root, download=False)
    assert isinstance(loaded, LoadedDataset)
    assert loaded.num_classes == 10 and loaded.class_names == [str(i) for i in range(10)]
    assert loaded.train_sources is None
    assert loaded.train.images.shape == (9, 1, 28, 28) and loaded.test.images.shape == (5, 1, 28, 28)
    assert np.array_equal(loaded.train.images[:, 0].numpy(), train[0])
    assert np.array_equal(loaded.train.labels.numpy(), train[1].astype(np.int64))
    assert np.array_equal(loaded.test.images[:, 0].numpy(), test[0])
    assert np.array_equal(loaded.test.labels.numpy(), test[1].astype(np.int64))
    assert listing(root) == before  # loading writes nothing


def test_mnist_limits_and_resize(tmp_path):
    root = tmp_path / "raw"
    train, test = write_mnist(root, gz=False)
    loaded = load_dataset("mnist", root, download=False, train_limit=4, test_limit=2)
    assert np.array_equal(loaded.train.images[:, 0].numpy(), train[0][:4])
    assert np.array_equal(loaded.test.labels.numpy(), test[1][:2].astype(np.int64))
    resized = load_dataset("mnist", root, download=False, train_limit=4, image_size=32)
    assert resized.train.images.shape == (4, 1, 32, 32) and resized.test.images.shape == (5, 1, 32, 32)
    expected = resize(torch.from_numpy(train[0][:4, None]), [32, 32], interpolation=InterpolationMode.BILINEAR,
                      antialias=True)
    assert torch.equal(resized.train.images, expected)


def test_mnist_has_no_debian_fallback(tmp_path, no_system_copy):
    write_mnist(no_system_copy, gz=True)
    root = tmp_path / "empty"
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("mnist", root, download=False)
    message = str(info.value)
    assert str(root) in message and "download disabled" in message and "\n" not in message
    assert str(no_system_copy) not in message


def test_mnist_label_out_of_range(tmp_path):
    root = tmp_path / "raw"
    write_mnist(root, gz=False, test_labels=np.array([1, 2, 12, 3, 4], dtype=np.uint8))
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("mnist", root, download=False)
    assert str(root / "t10k-labels-idx1-ubyte") in str(info.value) and "12" in str(info.value)


# --- CIFAR-10 pickle batches ----------------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def dump(path: Path, obj) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def write_cifar(directory: Path, per_batch: int = 3, n_test: int = 4, meta: bool = True, str_keys: bool = False):
    directory.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    rng = np.random.default_rng(5)
    batches = []
    for number in range(1, 7):
        count = n_test if number == 6 else per_batch
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, count)]
        name = "test_batch" if number == 6 else f"data_batch_{number}"
        dump(directory / name, {key("batch_label"): name.encode(), key("labels"): labels, key("data"): data,
                                key("filenames"): [f"img{i}.png".encode() for i in range(count)]})
        batches.append((data, labels))
    if meta:
        dump(directory / "batches.meta", {key("label_names"): [n.encode() for n in CIFAR_NAMES],
                                          key("num_cases_per_batch"): per_batch, key("num_vis"): 3072})
    train = (np.concatenate([b[0] for b in batches[:5]]), np.concatenate([b[1] for b in batches[:5]]))
    return train, batches[5]


@pytest.mark.parametrize("layout", ["torchvision", "flat"])
def test_cifar10_roundtrip(tmp_path, layout):
    root = tmp_path / "raw"
    train, test = write_cifar(root / "cifar-10-batches-py" if layout == "torchvision" else root)
    before = listing(root)
    loaded = load_dataset("cifar10", root, download=False)
    assert loaded.num_classes == 10 and loaded.class_names == CIFAR_NAMES and loaded.train_sources is None
    assert loaded.train.images.shape == (15, 3, 32, 32) and loaded.test.images.shape == (4, 3, 32, 32)
    assert np.array_equal(loaded.train.images.numpy(), train[0].reshape(15, 3, 32, 32))
    # CHW order: the first 1024 values are the red plane
    assert np.array_equal(loaded.train.images[0, 0].numpy().ravel(), train[0][0, :1024])
    assert np.array_equal(loaded.train.labels.numpy(), np.asarray(train[1]))
    assert np.array_equal(loaded.test.images.numpy(), test[0].reshape(4, 3, 32, 32))
    assert loaded.test.labels.tolist() == test[1]
    assert listing(root) == before


def test_cifar10_str_keys_without_meta_and_limits(tmp_path):
    train, _ = write_cifar(tmp_path, meta=False, str_keys=True)
    loaded = load_dataset("cifar10", tmp_path, download=False, train_limit=5, test_limit=1)
    assert loaded.class_names == [str(i) for i in range(10)]
    assert np.array_equal(loaded.train.images.numpy(), train[0][:5].reshape(5, 3, 32, 32))
    assert len(loaded.test) == 1


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_cifar10_malicious_pickle_is_refused(tmp_path, kind):
    root = tmp_path / "raw"
    write_cifar(root)
    marker = tmp_path / "pwned"
    payload = TouchesMarker(marker) if kind == "os.system" else EvalsMarker(marker)
    dump(root / "data_batch_3", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload]})
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("cifar10", root, download=False)
    message = str(info.value)
    assert str(root / "data_batch_3") in message and "refused" in message
    assert ("system" in message) if kind == "os.system" else ("eval" in message)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "wrong-shape", "label-range", "not-a-dict", "no-labels"])
def test_cifar10_bad_batch(tmp_path, damage):
    root = tmp_path / "raw"
    write_cifar(root)
    path = root / "test_batch"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong-shape":
        dump(path, {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
    elif damage == "label-range":
        dump(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]})
    elif damage == "not-a-dict":
        dump(path, [1, 2, 3])
    else:
        dump(path, {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("cifar10", root, download=False)
    message = str(info.value)
    assert str(path) in message and "cifar-10-python.tar.gz" in message
    expected = {"truncated": "not a readable", "wrong-shape": "(N, 3072)", "label-range": "label 10",
                "not-a-dict": "list", "no-labels": "labels"}[damage]
    assert expected in message


def test_cifar10_missing_test_batch_is_unavailable(tmp_path):
    root = tmp_path / "raw"
    write_cifar(root / "cifar-10-batches-py")
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("cifar10", root, download=False)
    message = str(info.value)
    assert str(root / "cifar-10-batches-py") in message and "data.root" in message and "\n" not in message


# --- GTSRB -----------------------------------------------------------------------------------------------------

GT_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(GT_HEADER)
        writer.writerows(rows)


def write_gtsrb(base: Path, train_sizes: dict[int, list[tuple[int, int]]], test: list[tuple[tuple[int, int], int]]):
    """Training/<class>/<class>_<i>.ppm + GT-<class>.csv; Final_Test/Images/<i>.ppm + GT-final_test.csv."""
    pixels = {}
    seed = 0
    for class_id, sizes in train_sizes.items():
        folder = base / "GTSRB" / "Training" / f"{class_id:05d}"
        folder.mkdir(parents=True)
        rows = []
        for i, (width, height) in enumerate(sizes):
            seed += 1
            image = rand_images(1, (height, width, 3), seed)[0]
            name = f"00000_{i:05d}.ppm"
            Image.fromarray(image).save(folder / name)
            pixels[(folder / name).relative_to(base.parent if base.name == "gtsrb" else base)] = image
            rows.append([name, width, height, 1, 1, width - 1, height - 1, class_id])
        write_csv(folder / f"GT-{class_id:05d}.csv", rows)
    images_dir = base / "GTSRB" / "Final_Test" / "Images"
    images_dir.mkdir(parents=True)
    rows, test_pixels = [], []
    for i, ((width, height), class_id) in enumerate(test):
        seed += 1
        image = rand_images(1, (height, width, 3), seed)[0]
        Image.fromarray(image).save(images_dir / f"{i:05d}.ppm")
        rows.append([f"{i:05d}.ppm", width, height, 1, 1, width - 1, height - 1, class_id])
        test_pixels.append(image)
    write_csv(base / "GT-final_test.csv", rows)
    return pixels, test_pixels


def resized(image: np.ndarray, size: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if tensor.shape[1:] == (size, size):
        return tensor
    return resize(tensor, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


TRAIN_SIZES = {0: [(32, 32), (40, 35)], 7: [(29, 31)], 42: [(50, 44), (32, 32), (30, 30)]}
TEST_ITEMS = [((32, 32), 42), ((45, 33), 0), ((31, 36), 7), ((32, 32), 0)]


@pytest.mark.parametrize("prefix", [True, False], ids=["gtsrb/", "no-prefix"])
def test_gtsrb_roundtrip(tmp_path, prefix):
    root = tmp_path / "raw"
    pixels, test_pixels = write_gtsrb(root / "gtsrb" if prefix else root, TRAIN_SIZES, TEST_ITEMS)
    before = listing(root)
    loaded = load_dataset("gtsrb", root, download=False)
    assert loaded.num_classes == 43 and len(loaded.class_names) == 43
    head = "gtsrb/" if prefix else ""
    assert loaded.train_sources == [f"{head}GTSRB/Training/{c:05d}/00000_{i:05d}.ppm"
                                    for c, sizes in TRAIN_SIZES.items() for i in range(len(sizes))]
    assert loaded.train.labels.tolist() == [0, 0, 7, 42, 42, 42]  # the folder's ClassId, not its index
    assert loaded.train.images.shape == (6, 3, 32, 32) and loaded.test.images.shape == (4, 3, 32, 32)
    for image, source in zip(loaded.train.images, loaded.train_sources):
        assert torch.equal(image, resized(pixels[Path(source)], 32))
    # A 32x32 image comes through untouched.
    assert np.array_equal(loaded.train.images[0].numpy(), pixels[Path(loaded.train_sources[0])].transpose(2, 0, 1))
    assert loaded.test.labels.tolist() == [42, 0, 7, 0]  # CSV order
    for image, original in zip(loaded.test.images, test_pixels):
        assert torch.equal(image, resized(original, 32))
    assert listing(root) == before


def test_gtsrb_image_size_and_seeded_limits(tmp_path):
    root = tmp_path / "raw"
    pixels, _ = write_gtsrb(root / "gtsrb", TRAIN_SIZES, TEST_ITEMS)
    first = load_dataset("gtsrb", root, download=False, train_limit=3, test_limit=2, image_size=16, seed=4)
    again = load_dataset("gtsrb", root, download=False, train_limit=3, test_limit=2, image_size=16, seed=4)
    assert first.train.images.shape == (3, 3, 16, 16) and first.test.images.shape == (2, 3, 16, 16)
    assert first.train_sources == again.train_sources and torch.equal(first.train.images, again.train.images)
    assert first.train_sources == sorted(first.train_sources)  # stored order kept
    for image, source, label in zip(first.train.images, first.train_sources, first.train.labels):
        assert torch.equal(image, resized(pixels[Path(source)], 16))
        assert int(source.split("/")[3]) == int(label)
    picks = {tuple(load_dataset("gtsrb", root, download=False, train_limit=3, seed=s).train_sources)
             for s in range(6)}
    assert len(picks) > 1


def gtsrb_root(tmp_path) -> Path:
    root = tmp_path / "raw"
    write_gtsrb(root / "gtsrb", TRAIN_SIZES, TEST_ITEMS)
    return root


def test_gtsrb_test_csv_label_out_of_range(tmp_path):
    root = gtsrb_root(tmp_path)
    path = root / "gtsrb" / "GT-final_test.csv"
    write_csv(path, [["00000.ppm", 32, 32, 1, 1, 31, 31, 43]])
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("gtsrb", root, download=False)
    assert str(path) in str(info.value) and "ClassId 43" in str(info.value) and "0..42" in str(info.value)


def test_gtsrb_class_csv_disagrees_with_folder(tmp_path):
    root = gtsrb_root(tmp_path)
    path = root / "gtsrb" / "GTSRB" / "Training" / "00007" / "GT-00007.csv"
    write_csv(path, [["00000_00000.ppm", 29, 31, 1, 1, 28, 30, 5]])
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("gtsrb", root, download=False)
    assert str(path) in str(info.value) and "ClassId 5" in str(info.value)


def test_gtsrb_csv_names_a_missing_file(tmp_path):
    root = gtsrb_root(tmp_path)
    (root / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00002.ppm").unlink()
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("gtsrb", root, download=False)
    assert str(root / "gtsrb" / "GT-final_test.csv") in str(info.value) and "00002.ppm" in str(info.value)


def test_gtsrb_empty_class_folder_and_bad_folder_name(tmp_path):
    root = gtsrb_root(tmp_path)
    empty = root / "gtsrb" / "GTSRB" / "Training" / "00003"
    empty.mkdir()
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("gtsrb", root, download=False)
    assert str(empty) in str(info.value) and "holds no images" in str(info.value)
    empty.rename(empty.with_name("00043"))
    with pytest.raises(DatasetInvalid, match="00043"):
        load_dataset("gtsrb", root, download=False)


def test_gtsrb_corrupt_ppm(tmp_path):
    root = gtsrb_root(tmp_path)
    path = root / "gtsrb" / "GTSRB" / "Training" / "00042" / "00000_00001.ppm"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("gtsrb", root, download=False)
    assert str(path) in str(info.value) and "remove or replace it" in str(info.value)


def test_gtsrb_without_test_part_is_unavailable(tmp_path):
    root = gtsrb_root(tmp_path)
    (root / "gtsrb" / "GT-final_test.csv").unlink()
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("gtsrb", root, download=False)
    message = str(info.value)
    assert str(root / "gtsrb" / "GT-final_test.csv") in message and "\n" not in message


# --- image folders ------------------------------------------------------------------------------------------------

def save_image(path: Path, array: np.ndarray, mode: str | None = None, **options) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **options)
    return array


def write_folder(root: Path, layout: dict[str, dict[str, int]], shape=(6, 5, 3), ext="png", start=0):
    """layout: split -> class -> image count; returns {relative path: pixels}."""
    written = {}
    seed = start
    for split, classes in layout.items():
        for name, count in classes.items():
            for i in range(count):
                seed += 1
                relative = f"{split}/{name}/{i:03d}.{ext}" if split else f"{name}/{i:03d}.{ext}"
                written[relative] = save_image(root / relative, rand_images(1, shape, seed)[0])
    return written


def chw(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def test_image_folder_png_roundtrip(tmp_path):
    root = tmp_path / "images"
    written = write_folder(root, {"train": {"dog": 2, "cat": 3}, "test": {"cat": 1, "dog": 2}})
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    before = listing(root)
    loaded = load_dataset("imagefolder", root, download=False)
    assert loaded.num_classes == 2 and loaded.class_names == ["cat", "dog"]
    assert loaded.train_sources == ["train/cat/000.png", "train/cat/001.png", "train/cat/002.png",
                                    "train/dog/000.png", "train/dog/001.png"]
    assert loaded.train.labels.tolist() == [0, 0, 0, 1, 1] and loaded.test.labels.tolist() == [0, 1, 1]
    assert loaded.train.images.shape == (5, 3, 6, 5) and loaded.test.images.shape == (3, 3, 6, 5)
    for image, source in zip(loaded.train.images, loaded.train_sources):
        assert np.array_equal(image.numpy(), chw(written[source]))
    tests = ["test/cat/000.png", "test/dog/000.png", "test/dog/001.png"]
    for image, source in zip(loaded.test.images, tests):
        assert np.array_equal(image.numpy(), chw(written[source]))
    assert listing(root) == before


def test_image_folder_jpeg_and_png_mixed(tmp_path):
    root = tmp_path / "images"
    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.stack([yy * 8, xx * 8, (yy + xx) * 4], axis=-1).astype(np.uint8)
    save_image(root / "train" / "a" / "x.jpg", smooth, quality=95)
    save_image(root / "train" / "a" / "y.JPEG", smooth[::-1].copy(), quality=95)
    png = save_image(root / "train" / "b" / "z.png", rand_images(1, (16, 16, 3), 9)[0])
    save_image(root / "test" / "a" / "t.jpeg", smooth, quality=95)
    save_image(root / "test" / "b" / "u.png", png)
    loaded = load_dataset("imagefolder", root, download=False)
    assert loaded.train.images.shape == (3, 3, 16, 16) and loaded.train.labels.tolist() == [0, 0, 1]
    assert loaded.train_sources == ["train/a/x.jpg", "train/a/y.JPEG", "train/b/z.png"]
    error = (loaded.train.images[0].int() - torch.from_numpy(chw(smooth)).int()).abs().float().mean()
    assert error < 4  # JPEG is lossy
    assert np.array_equal(loaded.train.images[2].numpy(), chw(png))
    assert np.array_equal(loaded.test.images[1].numpy(), chw(png))


def test_image_folder_grayscale_modes_give_one_channel(tmp_path):
    root = tmp_path / "images"
    gray = rand_images(1, (4, 4), 1)[0]
    save_image(root / "train" / "a" / "l.png", gray)
    save_image(root / "train" / "a" / "la.png", np.stack([gray, np.full_like(gray, 200)], -1), mode=None)
    save_image(root / "train" / "b" / "one.png", (gray > 127).astype(np.uint8) * 255, mode="1")
    wide = gray.astype(np.uint16) * 257
    Image.fromarray(wide).save(root / "train" / "b" / "sixteen.png")
    save_image(root / "test" / "a" / "t.bmp", gray)
    save_image(root / "test" / "b" / "t.png", gray)
    loaded = load_dataset("imagefolder", root, download=False)
    assert loaded.train.images.shape == (4, 1, 4, 4) and loaded.test.images.shape == (2, 1, 4, 4)
    assert np.array_equal(loaded.train.images[0, 0].numpy(), gray)
    assert np.array_equal(loaded.train.images[1, 0].numpy(), gray)  # LA: alpha dropped
    assert set(np.unique(loaded.train.images[2].numpy())) <= {0, 255}  # mode 1
    assert np.array_equal(loaded.train.images[3, 0].numpy(), gray)  # 16-bit scaled back to 8 bits
    assert np.array_equal(loaded.test.images[0, 0].numpy(), gray)


def test_image_folder_one_rgb_image_makes_three_channels(tmp_path):
    root = tmp_path / "images"
    gray = rand_images(1, (4, 4), 1)[0]
    color = rand_images(1, (4, 4, 3), 2)[0]
    save_image(root / "train" / "a" / "gray.png", gray)
    save_image(root / "train" / "b" / "color.png", color)
    save_image(root / "test" / "a" / "g.png", gray)
    save_image(root / "test" / "b" / "g.png", gray)
    loaded = load_dataset("imagefolder", root, download=False)
    assert loaded.train.images.shape == (2, 3, 4, 4)
    assert np.array_equal(loaded.train.images[0].numpy(), np.stack([gray] * 3))
    assert np.array_equal(loaded.train.images[1].numpy(), chw(color))


def test_image_folder_test_split_is_stratified_disjoint_and_seeded(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"": {"a": 10, "b": 5, "c": 2}})
    loaded = load_dataset("imagefolder", root, download=False, test_split=0.3, seed=1)
    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.train_sources[0] == "a/000.png"
    assert set(loaded.test.labels.tolist()) == {0, 1, 2}  # every class is in the test split
    assert len(loaded.test) == 3 + 2 + 1 and len(loaded.train) == 17 - 6
    assert np.bincount(loaded.train.labels.numpy()).tolist() == [7, 3, 1]
    # Disjoint and complete: every image lands in exactly one split.
    train_rows = {bytes(image.numpy()) for image in loaded.train.images}
    test_rows = {bytes(image.numpy()) for image in loaded.test.images}
    assert not train_rows & test_rows and len(train_rows | test_rows) == 17
    # The held-out files are named too (a list of known poison may name them).
    assert len(loaded.test_sources) == 6 and not set(loaded.test_sources) & set(loaded.train_sources)
    assert len(set(loaded.test_sources) | set(loaded.train_sources)) == 17
    assert [source.split("/")[0] for source in loaded.test_sources] == [loaded.class_names[label]
                                                                         for label in loaded.test.labels.tolist()]
    again = load_dataset("imagefolder", root, download=False, test_split=0.3, seed=1)
    assert again.train_sources == loaded.train_sources and torch.equal(again.test.images, loaded.test.images)
    splits = {tuple(load_dataset("imagefolder", root, download=False, test_split=0.3, seed=s).train_sources)
              for s in range(5)}
    assert len(splits) > 1


def test_image_folder_test_split_ignores_test_folder(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"train": {"a": 4, "b": 4}, "test": {"a": 1}})
    loaded = load_dataset("imagefolder", root, download=False, test_split=0.25)
    assert len(loaded.train) == 6 and len(loaded.test) == 2
    assert all(source.startswith("train/") for source in loaded.train_sources)


def test_image_folder_seeded_limits_keep_sources_aligned(tmp_path):
    root = tmp_path / "images"
    written = write_folder(root, {"train": {"a": 6, "b": 6}, "test": {"a": 3, "b": 3}})
    loaded = load_dataset("imagefolder", root, download=False, train_limit=5, test_limit=2, seed=3)
    assert len(loaded.train) == 5 and len(loaded.test) == 2 and len(loaded.train_sources) == 5
    assert loaded.train_sources == sorted(loaded.train_sources)
    for image, label, source in zip(loaded.train.images, loaded.train.labels, loaded.train_sources):
        assert np.array_equal(image.numpy(), chw(written[source]))
        assert loaded.class_names[int(label)] == source.split("/")[1]


def test_image_folder_sizes_must_agree_or_be_resized(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    odd = save_image(root / "train" / "b" / "big.png", rand_images(1, (9, 7, 3), 8)[0])
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("imagefolder", root, download=False)
    message = str(info.value)
    assert str(root / "train" / "a" / "000.png") in message and "5x6" in message
    assert str(root / "train" / "b" / "big.png") in message and "7x9" in message
    assert "set data.image_size" in message
    loaded = load_dataset("imagefolder", root, download=False, image_size=8)
    assert loaded.train.images.shape == (3, 3, 8, 8) and loaded.test.images.shape == (2, 3, 8, 8)
    index = loaded.train_sources.index("train/b/big.png")
    assert torch.equal(loaded.train.images[index], resized(odd, 8))


def test_image_folder_corrupt_png(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    bad = root / "train" / "b" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("imagefolder", root, download=False)
    assert str(bad) in str(info.value) and "remove or replace it" in str(info.value)


def test_image_folder_truncated_jpeg(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}}, shape=(16, 16, 3), ext="jpg")
    bad = root / "test" / "a" / "000.jpg"
    bad.write_bytes(bad.read_bytes()[:-60])
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("imagefolder", root, download=False)
    assert str(bad) in str(info.value) and "truncated" in str(info.value)
    assert "remove or replace it" in str(info.value)


def test_image_folder_empty_class_folder(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    empty = root / "train" / "c"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("imagefolder", root, download=False)
    assert str(empty) in str(info.value) and "holds no images with extensions" in str(info.value)
    assert ".png" in str(info.value)


def test_image_folder_missing_test_split(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"": {"a": 2, "b": 2}})
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("imagefolder", root, download=False)
    message = str(info.value)
    assert f"{root} has no test split" in message and f"{root}/test/<class>/" in message
    assert "data.test_split" in message
    write_folder(tmp_path / "split", {"train": {"a": 1}})
    with pytest.raises(DatasetInvalid, match="no test split"):
        load_dataset("imagefolder", tmp_path / "split", download=False)


def test_image_folder_mismatched_class_folders(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1, "zebra": 1}})
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("imagefolder", root, download=False)
    assert str(root / "test" / "zebra") in str(info.value) and "no matching class folder" in str(info.value)
    root = tmp_path / "images2"
    write_folder(root, {"train": {"a": 1, "b": 1, "c": 1}, "test": {"a": 1}})
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("imagefolder", root, download=False)
    assert str(root / "test") in str(info.value) and "b, c" in str(info.value)


def test_image_folder_not_there_is_unavailable(tmp_path):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(DatasetUnavailable) as info:
            load_dataset("imagefolder", root, download=False)
        assert str(root) in str(info.value) and "\n" not in str(info.value)


# --- npz ----------------------------------------------------------------------------------------------------------

def write_npz(path: Path, **overrides) -> dict[str, np.ndarray]:
    arrays = {
        "x_train": rand_images(7, (5, 4, 3), 1), "y_train": np.array([0, 1, 2, 3, 0, 1, 2], dtype=np.int32),
        "x_test": rand_images(3, (5, 4, 3), 2), "y_test": np.array([3, 0, 2], dtype=np.uint8),
    }
    arrays.update(overrides)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("shape", [(5, 4, 3), (5, 4, 1), (5, 4)], ids=["rgb", "one-channel", "no-channel"])
def test_npz_roundtrip(tmp_path, shape):
    path = tmp_path / "data.npz"
    arrays = write_npz(path, x_train=rand_images(7, shape, 1), x_test=rand_images(3, shape, 2))
    loaded = load_dataset("npz", path, download=False)
    channels = shape[2] if len(shape) == 3 else 1
    assert loaded.num_classes == 4 and loaded.class_names == ["0", "1", "2", "3"] and loaded.train_sources is None
    assert loaded.train.images.shape == (7, channels, 5, 4)
    expected = arrays["x_train"] if len(shape) == 3 else arrays["x_train"][..., None]
    assert np.array_equal(loaded.train.images.numpy(), expected.transpose(0, 3, 1, 2))
    assert loaded.train.labels.dtype == torch.int64 and loaded.train.labels.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert loaded.test.labels.tolist() == [3, 0, 2]
    limited = load_dataset("npz", path, download=False, train_limit=2, test_limit=1)
    assert torch.equal(limited.train.images, loaded.train.images[:2]) and len(limited.test) == 1


def test_npz_image_size_resizes_differing_splits(tmp_path):
    path = tmp_path / "data.npz"
    arrays = write_npz(path, x_test=rand_images(3, (9, 8, 3), 2))
    with pytest.raises(DatasetInvalid, match="share one shape"):
        load_dataset("npz", path, download=False)
    loaded = load_dataset("npz", path, download=False, image_size=6)
    assert loaded.train.images.shape == (7, 3, 6, 6) and loaded.test.images.shape == (3, 3, 6, 6)
    expected = resize(torch.from_numpy(arrays["x_test"].transpose(0, 3, 1, 2).copy()), [6, 6],
                      interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert torch.equal(loaded.test.images, expected)


NPZ_CASES = {
    "missing-array": (dict(y_test=None), ["y_test", "x_train, y_train, x_test"]),
    "float-images": (dict(x_train=np.zeros((7, 5, 4, 3), np.float32)),
                     ["x_train", "float32", "(x * 255).round().astype(np.uint8)"]),
    "channels-first": (dict(x_train=rand_images(7, (3, 5, 4), 1)),
                       ["x_train", "(7, 3, 5, 4)", "transpose(0, 2, 3, 1)"]),
    "bad-ndim": (dict(x_test=rand_images(3, (5,), 1)), ["x_test", "(3, 5)", "(N, H, W)"]),
    "count-mismatch": (dict(y_train=np.zeros(6, np.int64)), ["x_train holds 7", "y_train holds 6"]),
    "shape-mismatch": (dict(x_test=rand_images(3, (6, 4, 3), 1)), ["x_train", "x_test", "(5, 4, 3)", "(6, 4, 3)"]),
    "negative-label": (dict(y_train=np.array([0, 1, -1, 3, 0, 1, 2])), ["y_train", "negative label -1", "index 2"]),
    "test-label-range": (dict(y_test=np.array([3, 4, 2])), ["y_test", "label 4", "0..3"]),
    "float-labels": (dict(y_train=np.zeros(7, np.float64)), ["y_train", "float64", "integers"]),
    "2d-labels": (dict(y_train=np.zeros((7, 1), np.int64)), ["y_train", "(7, 1)", "1-D"]),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_npz_bad_arrays(tmp_path, case):
    path = tmp_path / "data.npz"
    overrides, fragments = NPZ_CASES[case]
    write_npz(path, **overrides)
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("npz", path, download=False)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


UNPICKLED = []


class Boom:
    def __reduce__(self):
        return (UNPICKLED.append, (True,))


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "data.npz"
    objects = np.empty(3, dtype=object)
    objects[:] = [Boom(), Boom(), Boom()]
    write_npz(path, y_test=objects)
    UNPICKLED.clear()
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("npz", path, download=False)
    assert str(path) in str(info.value) and "y_test" in str(info.value) and "object array" in str(info.value)
    assert UNPICKLED == []


def test_npz_not_an_archive_or_missing(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"certainly not an npz" * 10)
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("npz", path, download=False)
    assert str(path) in str(info.value) and "not an .npz archive" in str(info.value)
    assert "allow_pickle" not in str(info.value)  # never advise unpickling
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DatasetInvalid, match="single .npy array"):
        load_dataset("npz", tmp_path / "single.npy", download=False)
    write_npz(path)
    path.write_bytes(path.read_bytes()[:-30])  # cut inside the zip directory
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("npz", path, download=False)
    assert str(path) in str(info.value)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("npz", tmp_path / "absent.npz", download=False)
    assert str(tmp_path / "absent.npz") in str(info.value) and "data.root" in str(info.value)
    with pytest.raises(DatasetInvalid, match="folder"):
        load_dataset("npz", tmp_path, download=False)


# --- nothing there / download branch -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "gtsrb"])
def test_nothing_present_without_download(tmp_path, name):
    root = tmp_path / "nothing"
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, root, download=False)
    message = str(info.value)
    assert str(root) in message and "download disabled" in message and "data.root" in message
    assert "\n" not in message
    assert not root.exists()  # nothing written


@pytest.mark.parametrize("name, class_name", [("fashion_mnist", "FashionMNIST"), ("mnist", "MNIST"),
                                              ("cifar10", "CIFAR10"), ("gtsrb", "GTSRB")])
def test_failed_download_is_one_clear_line(tmp_path, monkeypatch, name, class_name):
    import urllib.error

    import torchvision.datasets

    calls = []

    def offline(root, download=False, **kwargs):
        calls.append((root, download, kwargs))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, class_name, offline)
    root = tmp_path / "raw"
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, root, download=True)
    message = str(info.value)
    assert "the download failed (URLError)" in message and str(root) in message and "data.root" in message
    assert "\n" not in message
    assert calls and calls[0][0] == str(root) and calls[0][1] is True


def test_download_result_is_read_by_the_local_reader(tmp_path, monkeypatch):
    import torchvision.datasets

    expected = {}

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            assert download
            if not expected:
                expected["data"] = write_mnist(Path(root) / "MNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    loaded = load_dataset("mnist", tmp_path / "raw", download=True)
    train, test = expected["data"]
    assert np.array_equal(loaded.train.images[:, 0].numpy(), train[0])
    assert np.array_equal(loaded.test.labels.numpy(), test[1].astype(np.int64))


def test_cifar_download_result_is_read_safely(tmp_path, monkeypatch):
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            folder = Path(root) / "cifar-10-batches-py"
            if not folder.exists():
                write_cifar(folder)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    loaded = load_dataset("cifar10", tmp_path / "raw", download=True)
    assert loaded.train.images.shape == (15, 3, 32, 32) and loaded.class_names == CIFAR_NAMES
