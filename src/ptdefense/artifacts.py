"""Paths, atomic writes and safe loading of artifacts."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class ArtifactError(RuntimeError):
    """An input artifact is missing or unreadable. The message names the file and the fix."""


def repo_root() -> Path:
    """The real repository root.

    Under `dvc exp run --temp/--queue` a stage runs in a copy under .dvc/tmp/exps; DVC then sets
    DVC_ROOT to the parent repository, which is where the shared MLflow store and raw data live.
    """
    env_root = os.environ.get("DVC_ROOT")
    if env_root:
        return Path(env_root).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / "dvc.yaml").is_file():
            # A temporary experiment workspace: .../<root>/.dvc/tmp/exps/<name>
            parts = candidate.parts
            if ".dvc" in parts:
                return Path(*parts[: parts.index(".dvc")])
            return candidate
    return here


def resolve_path(path: str | Path) -> Path:
    """Absolute paths as given; relative ones against the real repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def require_file(path: str | Path, producer: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: it is written by the `{producer}` stage; run `dvc repro {producer}`")
    return path


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_prefix(path: Path) -> str:
    """Name prefix of `path`'s temp file or staging folder: `.<name>.<host>.<pid>.`, so that a
    later writer can tell a killed writer's leftovers (same host, pid gone) from a live one's."""
    return f".{path.name}.{_host()}.{os.getpid()}."


def remove_orphans(path: Path) -> None:
    """Delete temp files of `path` left by a writer on this host that was killed (SIGKILL skips
    `finally`). Another host's temp files (a shared folder) are left alone: its pids mean nothing here."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}\.(\d+)\.[A-Za-z0-9_]+\.tmp$")
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(orphan.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if orphan.is_dir():
                shutil.rmtree(orphan, ignore_errors=True)
            else:
                orphan.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, payload: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """A header line and one line per row (fieldnames default to the first row's keys), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames or list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_npz(path: str | Path, **arrays) -> None:
    """An uncompressed .npz of the named arrays, in the order given, atomically."""
    import numpy as np  # not needed by the params layer, which imports this module

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_json(path: str | Path, producer: str) -> dict:
    path = require_file(path, producer)
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); re-create it with `dvc repro {producer}`") from None
