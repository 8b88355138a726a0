"""Models on disk: a directory with model.safetensors (weights, no code) and model.json (how to rebuild)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import safetensors
from safetensors.torch import load_file, save_file

from ptdefense.artifacts import ArtifactError, remove_orphans, temp_prefix
from ptdefense.models.blocknet import BlockNet
from ptdefense.models.registry import build_from_spec

# safetensors raises its own error type for a corrupt file (named differently across versions).
_SAFETENSORS_ERROR = getattr(safetensors, "SafetensorError", OSError)

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"
# Written instead of a model by a stage with nothing to train (the clean reference, when no sample
# is known to be poisoned); DVC still gets its output directory.
SKIPPED_FILE = "skipped.json"


def _write_directory(directory: str | Path, fill) -> None:
    """Write a directory atomically: build it beside the target with `fill(staging)`, then swap it in."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(directory)  # staging left by a writer that was killed
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(directory), suffix=".tmp", dir=directory.parent))
    try:
        fill(staging)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def save_model(model: BlockNet, directory: str | Path, spec: dict) -> None:
    def fill(staging: Path) -> None:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE)
        (staging / SPEC_FILE).write_text(json.dumps({**spec, "block_names": model.block_names}, indent=2, sort_keys=True) + "\n")

    _write_directory(directory, fill)


def save_skipped(directory: str | Path, reason: str) -> None:
    _write_directory(directory, lambda staging: (staging / SKIPPED_FILE).write_text(json.dumps({"skipped": reason}) + "\n"))


def skipped_reason(directory: str | Path) -> str | None:
    marker = Path(directory) / SKIPPED_FILE
    return json.loads(marker.read_text())["skipped"] if marker.is_file() else None


def load_model(directory: str | Path, producer: str) -> tuple[BlockNet, dict]:
    """Rebuild a model from its spec and load its weights (safetensors: no code is ever executed)."""
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    if (directory / SKIPPED_FILE).is_file():
        raise ArtifactError(f"{directory} holds no model: `{producer}` skipped it ({skipped_reason(directory)})")
    if not spec_path.is_file() or not weights_path.is_file():
        raise ArtifactError(f"{directory} is missing {SPEC_FILE} or {WEIGHTS_FILE}: it is written by the "
                            f"`{producer}` stage; run `dvc repro {producer}`")
    try:
        spec = json.loads(spec_path.read_text())
        model = build_from_spec(spec)
        state = load_file(weights_path)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, _SAFETENSORS_ERROR, json.JSONDecodeError) as error:
        raise ArtifactError(f"{directory} does not hold a valid model ({type(error).__name__}: "
                            f"{str(error).splitlines()[0][:200]}); re-create it with `dvc repro {producer}`") from None
    return model, spec
