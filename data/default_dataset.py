"""Make the dataset that params.yaml names readable before any stage runs (`make run`, `make test`).

Only Fashion-MNIST, the default, is fetched; any other `data.name` is left to the user (the stage
itself then names what is missing). In order:

1. a copy the loader already finds (data.root, or Debian's /usr/share/datasets/fashion-mnist): done;
2. Debian's package `dataset-fashion-mnist`, when apt-get is there and may be used (root, or sudo
   without a password);
3. torchvision's download into data.root (a machine with internet);
4. else one error that says what to do, before any stage has run (a failed `poison-data` would
   have removed its committed outputs first: DVC clears a stage's outputs before running it).

    .venv/bin/python data/default_dataset.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ptdefense.data.errors import DatasetError  # noqa: E402
from ptdefense.data.loading import load_dataset  # noqa: E402

PACKAGE = "dataset-fashion-mnist"


def readable(root: Path, download: bool) -> DatasetError | None:
    """None when the loader finds Fashion-MNIST (downloading it if `download`), else its error."""
    try:
        load_dataset("fashion_mnist", root, download=download, train_limit=1, test_limit=1)
    except DatasetError as error:
        return error
    return None


def apt_prefix() -> list[str] | None:
    """How to run apt-get here: [] as root, ["sudo", "-n"] with password-less sudo, None if not at all."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install_package(prefix: list[str]) -> bool:
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-qq", PACKAGE]
    if subprocess.run(install, env=environment).returncode == 0:
        return True
    # A fresh machine's package lists may be empty or stale.
    subprocess.run([*prefix, "apt-get", "update", "-qq"], env=environment)
    return subprocess.run(install, env=environment).returncode == 0


def main(params_file: Path = ROOT / "params.yaml") -> int:
    data = yaml.safe_load(params_file.read_text()).get("data", {})
    if data.get("name") != "fashion_mnist":
        print(f"data.name is {data.get('name')!r}: nothing to fetch (only the default, fashion_mnist, is)")
        return 0
    root = Path(data.get("root") or "data/raw")
    root = root if root.is_absolute() else ROOT / root
    if readable(root, download=False) is None:
        print("Fashion-MNIST: found")
        return 0
    prefix = apt_prefix()
    if prefix is not None:
        print(f"Fashion-MNIST: installing the Debian package {PACKAGE}")
        if install_package(prefix) and readable(root, download=False) is None:
            return 0
    if data.get("download", True):
        print(f"Fashion-MNIST: downloading with torchvision into {root}")
        if readable(root, download=True) is None:
            return 0
    how = "apt-get is missing or needs root" if prefix is None else f"apt-get could not install {PACKAGE}"
    print(f"error: Fashion-MNIST is not on this machine, {how}, and "
          f"{'the download failed' if data.get('download', True) else 'data.download is false'}. Fix: "
          f"`sudo apt-get install {PACKAGE}`, or copy the four idx(.gz) files of Fashion-MNIST into {root}, "
          "then run the command again.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
