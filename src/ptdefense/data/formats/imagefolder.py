"""Image folders in torchvision's ImageFolder layout: root/train/<class>/ and root/test/<class>/, or
root/<class>/ with a held-out test_split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ptdefense.data.errors import DatasetInvalid, DatasetUnavailable
from ptdefense.data.formats.images import GRAY_MODES, Sample, image_header, limit_samples, samples_dataset
from ptdefense.data.loading import LoadedDataset, LoadOptions


def load_image_folder(root: Path, options: LoadOptions) -> LoadedDataset:
    """Never downloaded; the limits keep a seeded random subset, image_size resizes (else one shared size)."""
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
    if options.test_split is not None:
        train_samples, test_samples = _held_out_split(root, train_dir, samples, float(options.test_split),
                                                      options.seed)
    else:
        train_samples, test_samples = samples, _test_folder_samples(root, train_dir, classes)
    train_samples = limit_samples(train_samples, options.train_limit, options.seed, 1)
    test_samples = limit_samples(test_samples, options.test_limit, options.seed, 2)
    channels, first_size = _channels_and_size(train_samples + test_samples, options.image_size)
    return samples_dataset(root, train_samples, test_samples, channels, options.image_size, first_size,
                           list(classes))


def _class_folders(directory: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith("."))


def _folder_samples(directory: Path, classes: list[str]) -> list[Sample]:
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


def _held_out_split(root: Path, train_dir: Path, samples: list[Sample], share: float,
                    seed: int) -> tuple[list[Sample], list[Sample]]:
    """The training folder's samples, less `share` of each class held out as the test set."""
    train_index, test_index = _stratified_split([label for _, label in samples], share, seed)
    if len(test_index) == 0:
        raise DatasetInvalid(f"{train_dir}: every class holds a single image, so data.test_split has nothing "
                             f"to hold out; add images or a {root}/test/<class>/ split")
    return [samples[i] for i in train_index], [samples[i] for i in test_index]


def _test_folder_samples(root: Path, train_dir: Path, classes: list[str]) -> list[Sample]:
    """The samples of root/test, whose class folders must match the training ones."""
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
    return _folder_samples(test_dir, classes)


def _channels_and_size(samples: list[Sample], image_size: int | None) -> tuple[int, tuple[int, int]]:
    """From the headers: 1 channel if every image is grey (else 3), and the first image's (width, height),
    which (without image_size) every image must share."""
    headers = [(path, *image_header(path)) for path, _ in samples]
    channels = 1 if all(mode in GRAY_MODES for _, mode, _ in headers) else 3
    first_path, _, first_size = headers[0]
    if image_size is None:
        for path, _, size in headers:
            if size != first_size:
                raise DatasetInvalid(
                    f"images differ in size: {first_path} is {first_size[0]}x{first_size[1]} but {path} is "
                    f"{size[0]}x{size[1]} (width x height); set data.image_size to resize them all"
                )
    return channels, first_size
