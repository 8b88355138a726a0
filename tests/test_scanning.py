"""The scanning workflow's pieces: the known-poison list, the suspects report, the params that turn
it on, and a comparison with no attack success rate."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from ptdefense.evaluation import comparison_markdown, comparison_table, isolation_sweep
from ptdefense.params import ParamsError, validate_params
from ptdefense.scanning import SUSPECT_COLUMNS, read_poison_list, suspects_rows, write_suspects_report

SOURCES = ["train/cat/a.png", "train/cat/b.png", "train/dog/c.jpg", "train/dog/d.jpg"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poison.txt"
    path.write_text(text)
    return path


# --- data.poison_indices ---------------------------------------------------------------------------

def test_poison_list_takes_indices_and_paths_with_comments(tmp_path):
    path = _write(tmp_path, "# known poison\n3\n\ntrain/cat/b.png  # found by hand\ntrain\\dog\\c.jpg\n3\n")
    indices, in_test = read_poison_list(path, 4, SOURCES)
    assert indices.tolist() == [1, 2, 3] and in_test == []  # sorted, duplicates merged


def test_poison_list_empty_file_means_no_known_poison(tmp_path):
    assert read_poison_list(_write(tmp_path, "# nothing yet\n"), 4, SOURCES)[0].numel() == 0


@pytest.mark.parametrize("line, message", [
    ("4", "index 4 is out of range: the training set has 4 samples (0..3)"),
    ("-1", "index -1 is out of range"),
    ("train/cat/zzz.png", "'train/cat/zzz.png' names no training sample; file paths must be relative to data.root"),
    ("--3", "'--3' names no training sample"),
])
def test_poison_list_line_naming_no_sample_is_an_error_with_its_line_number(tmp_path, line, message):
    path = _write(tmp_path, f"0\n{line}\n")
    with pytest.raises(ParamsError) as info:
        read_poison_list(path, 4, SOURCES)
    assert f"{path}:2:" in str(info.value) and message in str(info.value)


def test_poison_list_files_held_out_as_test_samples_are_reported_not_scored(tmp_path):
    """data.test_split draws the test set from the training folder: listed poison may land there."""
    path = _write(tmp_path, "train/cat/a.png\ntrain/dog/c.jpg\n")
    indices, in_test = read_poison_list(path, 2, SOURCES[:2], test_sources=SOURCES[2:])
    assert indices.tolist() == [0] and in_test == ["train/dog/c.jpg"]


def test_poison_list_paths_need_a_dataset_with_file_names(tmp_path):
    with pytest.raises(ParamsError, match="this dataset has no file names: use indices"):
        read_poison_list(_write(tmp_path, "a.png\n"), 4, None)


def test_poison_list_missing_file(tmp_path):
    with pytest.raises(ParamsError, match=r"data.poison_indices: .*missing.txt not found; .* or set it to null"):
        read_poison_list(tmp_path / "missing.txt", 4, SOURCES)


def test_poison_list_not_text(tmp_path):
    path = tmp_path / "poison.txt"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ParamsError, match="not a readable text file"):
        read_poison_list(path, 4, SOURCES)


# --- the suspects report ---------------------------------------------------------------------------

def test_suspects_report_lists_only_the_isolated_most_suspicious_first(tmp_path):
    scores = torch.tensor([0.2, 0.9, 0.1, 0.9])
    losses = torch.tensor([1.0, 0.01, 2.0, 0.02])
    labels = torch.tensor([0, 0, 1, 1])
    rows = suspects_rows(torch.tensor([0, 1, 3]), scores, losses, labels, ["cat", "dog"], SOURCES)
    # 1 and 3 tie on score: the lower index first, so the order is reproducible.
    assert [row["index"] for row in rows] == [1, 3, 0]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert rows[1]["source"] == "train/dog/d.jpg" and rows[1]["class_name"] == "dog" and rows[1]["label"] == 1
    path = tmp_path / "reports" / "suspects.csv"
    write_suspects_report(path, rows)
    with open(path) as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == SUSPECT_COLUMNS
    assert [row["source"] for row in read] == ["train/cat/b.png", "train/dog/d.jpg", "train/cat/a.png"]
    assert float(read[0]["partial_loss"]) == pytest.approx(0.01)


def test_suspects_report_without_sources_or_suspects(tmp_path):
    rows = suspects_rows(torch.tensor([2]), torch.zeros(3), torch.ones(3), torch.tensor([0, 1, 1]), ["0", "1"], None)
    assert rows[0]["source"] == "" and rows[0]["class_name"] == "1"
    path = tmp_path / "suspects.csv"
    write_suspects_report(path, [])
    assert path.read_text().strip() == ",".join(SUSPECT_COLUMNS)


# --- params -------------------------------------------------------------------------------------

def test_scanning_params_validate():
    params = validate_params({"attack": {"name": "none", "target_label": 99},  # the target is ignored
                              "data": {"name": "imagefolder", "root": "/data/suspect", "poison_indices": "data/raw/p.txt",
                                       "image_size": 32, "test_split": 0.2}})
    assert params.data.poison_indices == "data/raw/p.txt" and params.data.test_split == 0.2


def test_poison_list_needs_attack_none():
    with pytest.raises(ParamsError, match="data.poison_indices .* needs attack.name: none .*got 'badnets'"):
        validate_params({"data": {"poison_indices": "data/raw/p.txt"}})


def test_poison_rate_has_no_meaning_without_an_attack():
    with pytest.raises(ParamsError, match="attack.poison_rate has no meaning with attack.name none"):
        validate_params({"attack": {"name": "none", "poison_rate": 0.1}})


def test_test_split_is_for_image_folders_only():
    with pytest.raises(ParamsError, match="data.test_split applies to data.name imagefolder only"):
        validate_params({"data": {"name": "cifar10", "test_split": 0.2}})


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "gtsrb", "imagefolder", "npz"])
def test_every_dataset_name_is_accepted(name):
    assert validate_params({"data": {"name": name}}).data.name == name


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ParamsError) as info:
        validate_params({"data": {"name": "svhn"}})
    assert "fashion_mnist" in str(info.value) and "imagefolder" in str(info.value) and "npz" in str(info.value)


@pytest.mark.parametrize("size", [0, 7, 2048])
def test_image_size_out_of_range(size):
    with pytest.raises(ParamsError, match="data.image_size"):
        validate_params({"data": {"image_size": size}})


def test_gtsrb_target_label_range_is_checked_up_front():
    assert validate_params({"data": {"name": "gtsrb"}, "attack": {"target_label": 42}}).attack.target_label == 42
    with pytest.raises(ParamsError, match="gtsrb has classes 0..42"):
        validate_params({"data": {"name": "gtsrb"}, "attack": {"target_label": 43}})


# --- evaluation without a trigger or without known poison ---------------------------------------

def test_comparison_without_attack_success_rate_has_no_der():
    scores = {"no_defense": {"clean_accuracy": 0.9, "attack_success_rate": None, "robust_accuracy": None},
              "pt": {"clean_accuracy": 0.88, "attack_success_rate": None, "robust_accuracy": None}}
    isolation = {"pt": {"isolation_precision": None, "isolation_recall": None, "isolated_count": 12,
                        "isolated_per_class": {"0": 12, "1": 0}}}
    table = comparison_table(scores, isolation, {})
    assert table["pt"]["defense_effectiveness_rating"] is None
    assert table["pt"]["isolated_per_class"] == {"0": 12, "1": 0}
    text = comparison_markdown(table, "scan", None)
    assert "| PT | 88.00 | — | — | — | 12 | — |" in text
    assert "True poison samples in the training set: unknown" in text


def test_sweep_without_known_poison_is_undefined_not_zero():
    rows = isolation_sweep({"pt": torch.arange(10.0)}, torch.zeros(10, dtype=torch.bool), (0.1, 0.5), known=False)
    assert all(row["pt_precision"] != row["pt_precision"] for row in rows)  # NaN
    known = isolation_sweep({"pt": torch.arange(10.0)}, torch.arange(10) >= 8, (0.2,))
    assert known[0]["pt_precision"] == 1.0 and known[0]["pt_recall"] == 1.0


# --- the poison-data stage on bad input: one clear line, exit code 2, nothing written ------------

def _folder(root: Path, corrupt: bool = False) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            for number in range(3):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("L", (8, 8), color=40 * label + number).save(root / split / name / f"{number}.png")
    if corrupt:
        (root / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def _run_poison_data(tmp_path: Path, monkeypatch, data: dict) -> tuple[int, str]:
    import runpy

    import yaml

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "params.yaml").write_text(yaml.safe_dump({
        "data": {"name": "imagefolder", **data}, "attack": {"name": "none"}, "mlflow": {"enabled": False}}))
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "stages" / "poison_data.py"), run_name="__main__")
    assert not (workspace / "data").exists() and not (workspace / "metrics").exists()  # nothing half-written
    return info.value.code, workspace


def test_poison_data_stops_on_a_corrupt_image_naming_it(tmp_path, monkeypatch, capsys):
    _folder(tmp_path / "folder", corrupt=True)
    code, _ = _run_poison_data(tmp_path, monkeypatch, {"root": str(tmp_path / "folder")})
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: ") and "Traceback" not in error
    assert str(tmp_path / "folder" / "train" / "dog" / "1.png") in error and "remove or replace it" in error


def test_poison_data_stops_on_a_poison_list_naming_an_unknown_file(tmp_path, monkeypatch, capsys):
    _folder(tmp_path / "folder")
    (tmp_path / "poison.txt").write_text("train/cat/0.png\ntrain/dog/7.png\n")
    code, _ = _run_poison_data(tmp_path, monkeypatch, {"root": str(tmp_path / "folder"),
                                                       "poison_indices": str(tmp_path / "poison.txt")})
    error = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'poison.txt'}:2: 'train/dog/7.png' names no training sample" in error
