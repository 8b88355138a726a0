"""Per-epoch training checkpoints, so that a stage killed midway resumes where it stopped.

A stage opens a scope (`with checkpointing("isolate", params): ...`); every `fit` inside it then
saves, after each epoch, everything the next epoch depends on: model weights and buffers, the
optimiser and LR schedule, the shuffling generator, torch's global RNG, the epoch history and the
per-sample losses. Resuming restores all of it, so a killed-then-resumed run ends bit-identical to
an uninterrupted one (tested with a real SIGKILL through `dvc repro`).

- Location: `checkpoints/<stage>/<n>-<description>.pt` under the stage's working directory (git-
  and DVC-ignored; a `dvc exp run --temp/--queue` copy keeps its own). The n-th fit of a stage
  always gets slot n, since a stage calls its fits in a fixed order. A finished fit's checkpoint
  is kept until the stage has written its outputs, so a stage with several fits (ABL's phases,
  isolation's quarantine rounds) skips the ones that had finished.
- Validity: a checkpoint is used only if its fingerprint matches: the whole params digest, the
  fit's config, seed and description, a hash of its training data and of the model's weights
  before training, torch's version and a hash of this package's code. Anything else (changed
  params, data or code) starts clean and says so; so does an unreadable (torn) file.
- Safety: checkpoints are read with `torch.load(weights_only=True)`, which unpickles tensors and
  plain containers only. A file that asks to run code is refused with `ArtifactError`, never run.
- Writes are atomic (fsynced temp file + rename), so a kill or crash during a save leaves the
  previous checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch

from ptdefense.artifacts import ArtifactError, atomic_path

CHECKPOINT_ROOT = Path("checkpoints")
FORMAT_VERSION = 1


@dataclass
class CheckpointScope:
    stage: str
    params_digest: str
    directory: Path
    fits: int = 0
    resumed: list[str] = field(default_factory=list)

    def next_slot(self, description: str) -> Path:
        self.fits += 1
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", description).strip("-") or "fit"
        return self.directory / f"{self.fits:02d}-{name}.pt"


_SCOPE: ContextVar[CheckpointScope | None] = ContextVar("ptdefense_checkpoint_scope", default=None)


@contextmanager
def checkpointing(stage: str, params_digest: str, root: Path = CHECKPOINT_ROOT) -> Iterator[CheckpointScope]:
    """Checkpoint every `fit` in the block; delete the checkpoints once the block has succeeded."""
    scope = CheckpointScope(stage, params_digest, Path(root) / stage)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)
    # Only reached without an exception: the stage's outputs are written, the checkpoints have served.
    shutil.rmtree(scope.directory, ignore_errors=True)


def current_scope() -> CheckpointScope | None:
    return _SCOPE.get()


def fingerprint(scope: CheckpointScope, description: str, config: object, seed: int,
                tensors: list[torch.Tensor | None], model: torch.nn.Module, extra: str = "") -> str:
    """What the fit's result depends on. The data and the model's starting weights are hashed, so a
    checkpoint from other data or another upstream model is never resumed."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"v{FORMAT_VERSION}|{code_version()}|{scope.stage}|{scope.params_digest}|{description}|"
                  f"{config!r}|{seed}|{extra}".encode())
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb+") as handle:  # on disk before the rename: a crash leaves the old or the new
            os.fsync(handle.fileno())


@lru_cache(maxsize=1)
def code_version() -> str:
    """torch's version and a hash of this package's sources: a checkpoint written by other code
    (an edited training loop, say) is not resumed."""
    digest = hashlib.blake2b(torch.__version__.encode(), digest_size=16)
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def load_checkpoint(path: Path, expected_fingerprint: str) -> dict | None:
    """The checkpoint's state if it is ours and current; None if absent or stale (start clean).

    Raises ArtifactError for a file that is not a plain-tensor checkpoint (it is never executed).
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0][:300]
        raise ArtifactError(
            f"{path} is not a plain-tensor checkpoint and was refused without running it ({reason}); "
            f"delete {path.parent} to start the stage clean") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        # Torn by a crash of the machine, say: its epochs are lost, but training can start over.
        print(f"checkpoint {path} is unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
              "starting this fit clean", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected_fingerprint:
        print(f"checkpoint {path} is from other params, data or code; starting this fit clean", file=sys.stderr)
        return None
    return state
