"""Session fixtures shared by the end-to-end modules: one tiny pipeline, reproduced once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dvc_workspace import TINY, copy_repo, reproducible_state, run


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("e2e") / "repo", TINY)


@pytest.fixture(scope="session")
def tiny_reproduced(tiny_workspace: Path) -> subprocess.CompletedProcess:
    return run(["dvc", "repro"], tiny_workspace)


@pytest.fixture(scope="session")
def tiny_baseline(tiny_workspace: Path, tiny_reproduced) -> dict:
    """The uninterrupted run's outputs, taken before any later test changes the workspace."""
    return reproducible_state(tiny_workspace)
