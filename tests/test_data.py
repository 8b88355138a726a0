"""Fashion-MNIST loading from real idx files, and the ImageSet's safe .npz form."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ptdefense.artifacts import ArtifactError
from ptdefense.data.catalogue import dataset_num_classes
from ptdefense.data.dataset import ImageSet, load_npz
from ptdefense.data.errors import DatasetInvalid, DatasetUnavailable
from ptdefense.data.formats import idx
from ptdefense.data.loading import load_dataset


TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def idx3_bytes(images: np.ndarray) -> bytes:
    assert images.dtype == np.uint8 and images.ndim == 3
    return struct.pack(">IIII", 2051, *images.shape) + images.tobytes()


def idx1_bytes(labels: np.ndarray) -> bytes:
    assert labels.dtype == np.uint8 and labels.ndim == 1
    return struct.pack(">II", 2049, labels.shape[0]) + labels.tobytes()


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def write(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_dataset(directory: Path, gz: bool, n_train: int = 12, n_test: int = 7):
    train, test = make_split(n_train, 1), make_split(n_test, 2)
    write(directory / TRAIN_IMAGES, idx3_bytes(train[0]), gz)
    write(directory / TRAIN_LABELS, idx1_bytes(train[1]), gz)
    write(directory / TEST_IMAGES, idx3_bytes(test[0]), gz)
    write(directory / TEST_LABELS, idx1_bytes(test[1]), gz)
    return train, test


@pytest.fixture(autouse=True)
def no_system_copy(tmp_path, monkeypatch):
    """Never fall back to a Fashion-MNIST installed on this machine."""
    empty = tmp_path / "no-debian-copy"
    empty.mkdir()
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", empty)
    return empty


def assert_split(loaded: ImageSet, expected: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = expected
    assert loaded.images.dtype == torch.uint8
    assert loaded.images.shape == (images.shape[0], 1, 28, 28)
    assert loaded.labels.dtype == torch.int64
    assert loaded.labels.shape == (images.shape[0],)
    assert np.array_equal(loaded.images[:, 0].numpy(), images)
    assert np.array_equal(loaded.labels.numpy(), labels.astype(np.int64))


# --- idx loading --------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_load_idx_roundtrip(tmp_path, gz, layout):
    root = tmp_path / "raw"
    directory = root if layout == "flat" else root / "FashionMNIST" / "raw"
    train, test = write_dataset(directory, gz)
    loaded = load_dataset("fashion_mnist", root, download=False)
    loaded_train, loaded_test = loaded.train, loaded.test
    assert_split(loaded_train, train)
    assert_split(loaded_test, test)
    # The reports name Fashion-MNIST's labels, in label order.
    assert loaded.class_names[0] == "T-shirt/top" and loaded.class_names[9] == "Ankle boot"


def test_mixed_plain_and_gz(tmp_path):
    root = tmp_path / "raw"
    train, test = make_split(5, 3), make_split(4, 4)
    write(root / TRAIN_IMAGES, idx3_bytes(train[0]), gz=True)
    write(root / TRAIN_LABELS, idx1_bytes(train[1]), gz=False)
    write(root / TEST_IMAGES, idx3_bytes(test[0]), gz=False)
    write(root / TEST_LABELS, idx1_bytes(test[1]), gz=True)
    loaded = load_dataset("fashion_mnist", root, download=False)
    loaded_train, loaded_test = loaded.train, loaded.test
    assert_split(loaded_train, train)
    assert_split(loaded_test, test)


def test_system_copy_used_as_fallback(tmp_path, no_system_copy):
    train, test = write_dataset(no_system_copy, gz=True)
    loaded = load_dataset("fashion_mnist", tmp_path / "empty-root", download=False)
    loaded_train, loaded_test = loaded.train, loaded.test
    assert_split(loaded_train, train)
    assert_split(loaded_test, test)


def test_local_root_preferred_over_system_copy(tmp_path, no_system_copy):
    write_dataset(no_system_copy, gz=True, n_train=3, n_test=3)
    root = tmp_path / "raw"
    train, test = write_dataset(root, gz=False, n_train=9, n_test=5)
    loaded = load_dataset("fashion_mnist", root, download=False)
    loaded_train, loaded_test = loaded.train, loaded.test
    assert_split(loaded_train, train)
    assert_split(loaded_test, test)


@pytest.mark.parametrize("train_limit, test_limit", [(5, 3), (1, 1), (12, 7), (100, 100), (None, 2), (4, None)])
def test_limits_take_the_first_samples(tmp_path, train_limit, test_limit):
    root = tmp_path / "raw"
    train, test = write_dataset(root, gz=False, n_train=12, n_test=7)
    loaded = load_dataset("fashion_mnist", root, download=False, train_limit=train_limit, test_limit=test_limit)
    loaded_train, loaded_test = loaded.train, loaded.test
    assert_split(loaded_train, (train[0][:train_limit], train[1][:train_limit]))
    assert_split(loaded_test, (test[0][:test_limit], test[1][:test_limit]))


def test_not_found_without_download(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("fashion_mnist", root, download=False)
    message = str(info.value)
    assert "dataset-fashion-mnist" in message
    assert str(root) in message


def test_half_a_dataset_is_not_found(tmp_path):
    """Only the train split present: no silent success with a missing test split."""
    root = tmp_path / "raw"
    train = make_split(3, 0)
    write(root / TRAIN_IMAGES, idx3_bytes(train[0]), gz=False)
    write(root / TRAIN_LABELS, idx1_bytes(train[1]), gz=False)
    with pytest.raises(DatasetUnavailable, match="dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root, download=False)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("svhn", tmp_path, download=False)
    assert dataset_num_classes("fashion_mnist") == 10
    with pytest.raises(ValueError, match="fashion_mnist"):
        dataset_num_classes("svhn")


def _bad_magic_header() -> bytes:
    return struct.pack(">IIII", 0x00000800, 12, 28, 28) + bytes(12 * 28 * 28)  # 0 dimensions


CORRUPTIONS = {
    "empty": lambda good: b"",
    "truncated-header": lambda good: good[:6],
    "truncated-pixels": lambda good: good[:-100],
    "trailing-garbage": lambda good: good + b"\x00" * 5,
    "zero-dims": lambda good: _bad_magic_header(),
    "text": lambda good: b"this is not an idx file at all, just some text" * 30,
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_corrupt_image_file(tmp_path, kind, gz):
    root = tmp_path / "raw"
    write_dataset(root, gz=False)
    good = (root / TRAIN_IMAGES).read_bytes()
    (root / TRAIN_IMAGES).unlink()
    bad = write(root / TRAIN_IMAGES, CORRUPTIONS[kind](good), gz)
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("fashion_mnist", root, download=False)
    assert str(bad) in str(info.value)


def test_corrupt_label_file(tmp_path):
    root = tmp_path / "raw"
    write_dataset(root, gz=False)
    (root / TEST_LABELS).write_bytes(b"\x00\x00\x08")
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("fashion_mnist", root, download=False)
    assert str(root / TEST_LABELS) in str(info.value)


def test_truncated_gzip_stream(tmp_path):
    root = tmp_path / "raw"
    write_dataset(root, gz=True)
    path = root / (TRAIN_IMAGES + ".gz")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("fashion_mnist", root, download=False)
    assert str(path) in str(info.value)


def test_image_label_count_mismatch(tmp_path):
    root = tmp_path / "raw"
    write_dataset(root, gz=False, n_train=12)
    (root / TRAIN_LABELS).write_bytes(idx1_bytes(np.zeros(11, dtype=np.uint8)))
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("fashion_mnist", root, download=False)
    assert str(root / TRAIN_IMAGES) in str(info.value)
    assert str(root / TRAIN_LABELS) in str(info.value)


def test_images_and_labels_swapped(tmp_path):
    """A label file where images belong (1 dimension instead of 3) is rejected, not reshaped."""
    root = tmp_path / "raw"
    write_dataset(root, gz=False)
    (root / TRAIN_IMAGES).write_bytes(idx1_bytes(np.zeros(12, dtype=np.uint8)))
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("fashion_mnist", root, download=False)
    assert str(root / TRAIN_IMAGES) in str(info.value)


def test_corrupt_unknown_type_byte_in_idx_header(tmp_path):
    root = tmp_path / "raw"
    write_dataset(root, gz=False)
    good = bytearray((root / TRAIN_IMAGES).read_bytes())
    good[2] = 0x0A  # magic 0x00000803 -> 0x00000A03: no idx type has code 0x0A
    (root / TRAIN_IMAGES).write_bytes(bytes(good))
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("fashion_mnist", root, download=False)
    assert str(root / TRAIN_IMAGES) in str(info.value)


def test_idx_file_of_wrong_element_type(tmp_path):
    root = tmp_path / "raw"
    write_dataset(root, gz=False, n_train=12)
    pixels = np.zeros((12, 28, 28), dtype=">i4")  # a self-consistent int32 idx3 file
    (root / TRAIN_IMAGES).write_bytes(struct.pack(">IIII", 0x00000C03, 12, 28, 28) + pixels.tobytes())
    with pytest.raises(DatasetInvalid) as info:
        load_dataset("fashion_mnist", root, download=False)
    assert str(root / TRAIN_IMAGES) in str(info.value)


# --- ImageSet -----------------------------------------------------------------------------------

def small_set(n: int = 6, shape=(1, 5, 4), seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), dtype=torch.int64, generator=generator)
    return ImageSet(images, labels)


def test_imageset_validates_dtypes_and_shapes():
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.float32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_imageset_subset_and_len():
    data = small_set(6)
    sub = data.subset(torch.tensor([4, 1]))
    assert len(sub) == 2
    assert sub.image_shape == (1, 5, 4)
    assert torch.equal(sub.images[0], data.images[4])
    assert torch.equal(sub.labels, data.labels[[4, 1]])


def test_imageset_save_load_roundtrip(tmp_path):
    data = small_set(7, shape=(3, 6, 5))
    path = tmp_path / "sub" / "set.npz"
    data.save(path, poison_indices=np.array([1, 3], dtype=np.int64))
    loaded = ImageSet.load(path)
    assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
    assert torch.equal(loaded.images, data.images)
    assert torch.equal(loaded.labels, data.labels)
    arrays = load_npz(path, "poison-data", required=("images", "labels", "poison_indices"))
    assert arrays["poison_indices"].tolist() == [1, 3]
    assert [p.name for p in path.parent.iterdir()] == ["set.npz"]  # no temp file left behind


def test_imageset_save_overwrites(tmp_path):
    path = tmp_path / "set.npz"
    small_set(4, seed=1).save(path)
    second = small_set(3, seed=2)
    second.save(path)
    loaded = ImageSet.load(path)
    assert torch.equal(loaded.images, second.images)


def test_imageset_load_missing_names_the_stage(tmp_path):
    path = tmp_path / "missing.npz"
    with pytest.raises(ArtifactError) as info:
        ImageSet.load(path, producer="poison-data")
    assert str(path) in str(info.value)
    assert "poison-data" in str(info.value)
    with pytest.raises(ArtifactError, match="my-stage"):
        ImageSet.load(path, producer="my-stage")


def test_imageset_load_not_an_npz(tmp_path):
    path = tmp_path / "set.npz"
    path.write_bytes(b"certainly not an npz archive" * 4)
    with pytest.raises(ArtifactError) as info:
        ImageSet.load(path, producer="poison-data")
    assert str(path) in str(info.value)
    assert "poison-data" in str(info.value)


def test_imageset_load_truncated_npz(tmp_path):
    path = tmp_path / "set.npz"
    small_set(20).save(path)
    path.write_bytes(path.read_bytes()[:-40])  # cut off inside the zip's central directory
    with pytest.raises(ArtifactError) as info:
        ImageSet.load(path, producer="poison-data")
    assert "poison-data" in str(info.value)


def test_imageset_load_missing_arrays(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((2, 1, 3, 3), dtype=np.uint8))
    with pytest.raises(ArtifactError, match="labels"):
        ImageSet.load(path)


def test_imageset_load_wrong_dtype(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((2, 1, 3, 3), dtype=np.float32), labels=np.zeros(2, dtype=np.int64))
    with pytest.raises(ArtifactError, match="poison-data"):
        ImageSet.load(path)


class _Boom:
    """Unpickling this would run code: the loader must never get that far."""

    def __reduce__(self):
        return (_record_unpickle, ())


UNPICKLED = []


def _record_unpickle():
    UNPICKLED.append(True)
    return "unpickled"


def test_load_npz_refuses_object_arrays(tmp_path):
    path = tmp_path / "evil.npz"
    objects = np.empty(1, dtype=object)
    objects[0] = _Boom()
    with open(path, "wb") as handle:
        np.savez(handle, images=objects, labels=np.zeros(1, dtype=np.int64))
    UNPICKLED.clear()
    with pytest.raises(ArtifactError) as info:
        load_npz(path, "poison-data", required=("images", "labels"))
    assert str(path) in str(info.value)
    with pytest.raises(ArtifactError):
        ImageSet.load(path)
    assert UNPICKLED == []
