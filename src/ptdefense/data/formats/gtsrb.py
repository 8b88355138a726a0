"""GTSRB: the class folders of GTSRB_Final_Training_Images and the images and CSV of the final test set."""

from __future__ import annotations

import csv
from pathlib import Path

from ptdefense.data.catalogue import NUM_CLASSES
from ptdefense.data.errors import DatasetInvalid, DatasetUnavailable
from ptdefense.data.formats.images import Sample, limit_samples, samples_dataset
from ptdefense.data.loading import LoadedDataset, LoadOptions, torchvision_download, unavailable

GTSRB_CLASSES = NUM_CLASSES["gtsrb"]  # 43
GTSRB_DEFAULT_SIZE = 32


def load_gtsrb(root: Path, options: LoadOptions) -> LoadedDataset:
    """Images resized to image_size (32 when None); the limits keep a seeded random subset."""
    base = _gtsrb_base(root)
    failure = None
    if base is None and options.download:
        failure = torchvision_download("GTSRB", root, split=("train", "test"))
        base = _gtsrb_base(root) if failure is None else None
    if base is None:
        raise _gtsrb_unavailable(root, options.download, failure)
    train_dir, test_dir, test_csv = _gtsrb_parts(base)
    train_samples = _gtsrb_train_samples(train_dir)
    test_samples = _gtsrb_test_samples(test_dir, test_csv)
    train_samples = limit_samples(train_samples, options.train_limit, options.seed, 1)
    test_samples = limit_samples(test_samples, options.test_limit, options.seed, 2)
    size = options.image_size or GTSRB_DEFAULT_SIZE
    return samples_dataset(root, train_samples, test_samples, 3, size, None, [str(i) for i in range(GTSRB_CLASSES)])


def _gtsrb_unavailable(root: Path, download: bool, failure: BaseException | None) -> DatasetUnavailable:
    near = root if (root / "GTSRB").is_dir() and not (root / "gtsrb").is_dir() else root / "gtsrb"
    layout = [part.relative_to(near).as_posix() for part in _gtsrb_parts(near)]
    missing = [str(part) for part in _gtsrb_parts(near) if not part.exists()]
    fix = (f"put {layout[0]}/<00000…00042>/*.ppm, {layout[1]}/*.ppm and {layout[2]} in {root / 'gtsrb'} "
           f"(missing: {', '.join(missing)}), or set data.root")
    return unavailable("GTSRB", [root / "gtsrb", root], download, failure, fix)


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


def _gtsrb_train_samples(train_dir: Path) -> list[Sample]:
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


def _gtsrb_test_samples(test_dir: Path, test_csv: Path) -> list[Sample]:
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
