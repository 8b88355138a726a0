"""data/default_dataset.py (`make run` / `make test`): the default dataset is found, fetched, or
refused with one error that names the fix, before any stage runs."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

import default_dataset  # noqa: E402

import ptdefense.data.formats.idx as idx  # noqa: E402


def write_params(tmp_path: Path, **data) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"name": "fashion_mnist", "root": str(tmp_path / "raw"), **data}}))
    return params


def write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_another_dataset_is_left_to_the_user(tmp_path, capsys):
    assert default_dataset.main(write_params(tmp_path, name="mnist")) == 0
    assert "nothing to fetch" in capsys.readouterr().out


def test_a_copy_in_data_root_is_found_without_installing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(default_dataset, "install_package", lambda prefix: (_ for _ in ()).throw(AssertionError))
    raw = tmp_path / "raw"
    raw.mkdir()
    images, labels = np.zeros((3, 28, 28)), np.array([0, 1, 2])
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", labels)
    assert default_dataset.main(write_params(tmp_path)) == 0
    assert "found" in capsys.readouterr().out


def test_without_a_copy_apt_or_download_one_error_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(default_dataset.shutil, "which", lambda name: None)  # a machine without apt-get
    assert default_dataset.main(write_params(tmp_path, download=False)) == 1
    error = capsys.readouterr().err
    assert "apt-get is missing" in error and "data.download is false" in error
    assert "apt-get install dataset-fashion-mnist" in error and str(tmp_path / "raw") in error
    assert not (tmp_path / "raw").exists()  # nothing half-written
