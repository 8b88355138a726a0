"""Atomic writes, JSON helpers, and finding the real repository root (also under `dvc exp run --temp`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptdefense.artifacts import (ArtifactError, atomic_path, read_json, repo_root, require_file, resolve_path,
                                 write_json, write_text)


# --- atomic_path --------------------------------------------------------------------------------

def test_atomic_path_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp != target
        assert tmp.parent == target.parent  # same filesystem: the rename is atomic
        tmp.write_text("hello")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_keeps_previous_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_replaces_existing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_atomic_path_block_that_never_writes(tmp_path):
    """The temp file exists (empty) from the start: an untouched block publishes an empty file."""
    target = tmp_path / "out.txt"
    with atomic_path(target):
        pass
    assert target.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# --- JSON and text ------------------------------------------------------------------------------

def test_write_json_roundtrip(tmp_path):
    payload = {"b": [1, 2.5, None], "a": {"nested": True, "text": "ü"}, "n": 3}
    path = tmp_path / "metrics" / "m.json"
    write_json(path, payload)
    assert json.loads(path.read_text()) == payload
    assert read_json(path, "evaluate") == payload
    assert path.read_text().endswith("\n")
    assert list(json.loads(path.read_text())) == ["a", "b", "n"]  # sorted keys: stable diffs


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    path = tmp_path / "m.json"
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_write_text(tmp_path):
    path = tmp_path / "r.md"
    write_text(path, "line\n")
    assert path.read_text() == "line\n"


def test_read_json_missing_names_the_stage(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(ArtifactError) as info:
        read_json(path, "evaluate")
    assert str(path) in str(info.value)
    assert "dvc repro evaluate" in str(info.value)


def test_read_json_invalid(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{broken")
    with pytest.raises(ArtifactError, match="finetune"):
        read_json(path, "finetune")


def test_require_file(tmp_path):
    path = tmp_path / "f"
    with pytest.raises(ArtifactError, match="isolate"):
        require_file(path, "isolate")
    with pytest.raises(ArtifactError):
        require_file(tmp_path, "isolate")  # a directory is not a file
    path.write_text("x")
    assert require_file(path, "isolate") == path


# --- repo_root / resolve_path -------------------------------------------------------------------

@pytest.fixture
def no_dvc_root(monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)


def test_repo_root_honours_dvc_root(tmp_path, monkeypatch):
    root = tmp_path / "real-root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DVC_ROOT", str(root))
    assert repo_root() == root.resolve()


def test_repo_root_from_temp_experiment_workspace(tmp_path, monkeypatch, no_dvc_root):
    root = tmp_path / "repo"
    workspace = root / ".dvc" / "tmp" / "exps" / "xyz"
    workspace.mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    # A temp experiment workspace is a full copy of the repo: its own dvc.yaml and .dvc.
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    (workspace / ".dvc").mkdir()
    monkeypatch.chdir(workspace)
    assert repo_root() == root.resolve()


def test_repo_root_from_subdirectory_of_temp_workspace(tmp_path, monkeypatch, no_dvc_root):
    root = tmp_path / "repo"
    sub = root / ".dvc" / "tmp" / "exps" / "xyz" / "stages"
    sub.mkdir(parents=True)
    (root / ".dvc" / "tmp" / "exps" / "xyz" / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(sub)
    assert repo_root() == root.resolve()


def test_repo_root_plain_repository(tmp_path, monkeypatch, no_dvc_root):
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    (root / "src" / "pkg").mkdir(parents=True)
    monkeypatch.chdir(root / "src" / "pkg")
    assert repo_root() == root.resolve()
    monkeypatch.chdir(root)
    assert repo_root() == root.resolve()


def test_repo_root_dvc_yaml_only(tmp_path, monkeypatch, no_dvc_root):
    root = tmp_path / "repo"
    (root / "deep").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(root / "deep")
    assert repo_root() == root.resolve()


def test_repo_root_outside_any_repo_is_cwd(tmp_path, monkeypatch, no_dvc_root):
    if any((p / ".dvc").is_dir() or (p / "dvc.yaml").is_file() for p in tmp_path.resolve().parents):
        pytest.skip("tmp_path lies inside a DVC repository")
    monkeypatch.chdir(tmp_path)
    assert repo_root() == tmp_path.resolve()


def test_empty_dvc_root_is_ignored(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_ROOT", "")
    assert repo_root() == root.resolve()


def test_resolve_path_absolute_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "root"))
    absolute = tmp_path / "somewhere" / "file.npz"
    assert resolve_path(absolute) == absolute
    assert resolve_path(str(absolute)) == absolute


def test_resolve_path_relative_anchored_at_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data/raw") == root.resolve() / "data" / "raw"
    assert resolve_path(Path("mlflow.db")) == root.resolve() / "mlflow.db"


def test_resolve_path_relative_from_temp_workspace(tmp_path, monkeypatch, no_dvc_root):
    root = tmp_path / "repo"
    workspace = root / ".dvc" / "tmp" / "exps" / "abc"
    workspace.mkdir(parents=True)
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(workspace)
    assert resolve_path("data/raw") == root.resolve() / "data" / "raw"


def test_resolve_path_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/x.txt") == tmp_path / "x.txt"
