"""A git + DVC copy of the repository for end-to-end tests, and a runner for commands in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["GIT_AUTHOR_NAME"] = environment["GIT_COMMITTER_NAME"] = "test"
    environment["GIT_AUTHOR_EMAIL"] = environment["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    return environment


def run(args: list[str], workspace: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=workspace, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Poll `condition` every 20 ms; fail if `process` ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def copy_repo(target: Path, params_override: dict) -> Path:
    """Copy the tracked and untracked-but-not-ignored files (no outputs, no dvc.lock), apply
    `params_override` to params.yaml, and commit it all in a fresh git repository, naming the source commit."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        outputs = name.startswith(("data/", "models/", "metrics/", "plots/", "reports/")) and not name.startswith("data/raw/")
        if not source.is_file() or name == "dvc.lock" or outputs:
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    (target / "params.yaml").write_text(yaml.safe_dump(merge(params, params_override), sort_keys=False))
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", f"workspace of {code_commit()}"], target)  # where its code came from
    return target


def code_commit() -> str:
    """HEAD's short hash, with "-dirty" when the code the stages run differs from it (uncommitted edits)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    edited = subprocess.run(["git", "status", "--porcelain", "--", "src", "stages", "params.yaml", "dvc.yaml"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    return f"{head}-dirty" if edited else head


# fp32 everywhere: bf16 autocast is about 2x faster than fp32 on CPUs with native bf16 (AVX512-BF16,
# AMX) but 8x slower on those without (measured on an AVX2 AMD EPYC: 107 against 829 images/s), and
# the end-to-end tests check behaviour, not precision. bf16 training is covered by the unit tests.
# min_steps 0: the tiny sets train the epochs they name (the default floor would multiply them).
QUICK = {section: {"precision": "fp32", "min_steps": 0} for section in ("train", "partial", "isolation", "finetune", "abl")}

# A tiny configuration of the whole pipeline (about a minute on two CPU cores).
TINY = merge(QUICK, {
    "data": {"train_limit": 3000, "test_limit": 600},
    "train": {"epochs": 2},
    "partial": {"epochs": 1},
    "isolation": {"quarantine_epochs": 1},
    "finetune": {"epochs": 1},
    "abl": {"isolation_epochs": 1, "retrain_epochs": 1, "unlearn_epochs": 1},
})

# Measurements of the machine, not results: they differ between any two runs.
TIMING_KEYS = {"wall_seconds", "epoch_seconds", "images_per_second"}
TIMED_FILES = {"reports/evaluate.md"}  # its table shows each method's wall seconds


def _drop_timing(value):
    if isinstance(value, dict):
        return {k: _drop_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    return value


def reproducible_state(workspace: Path) -> dict:
    """What a rerun with the same params and seed must reproduce bit for bit: the hash DVC recorded
    for every output (models, data, CSVs, plots), and every metric except wall-clock timings."""
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    hashes = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if not out["path"].startswith("metrics/") and out["path"] not in TIMED_FILES:
                hashes[out["path"]] = out["md5"]
    metrics = {path.name: _drop_timing(json.loads(path.read_text()))
               for path in sorted((workspace / "metrics").glob("*.json"))}
    return {"outputs": hashes, "metrics": metrics}
