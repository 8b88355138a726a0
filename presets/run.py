"""Run a preset (presets/<name>.yaml) as a DVC experiment: its keys become `-S` overrides.

    .venv/bin/python presets/run.py backdoorbench-cifar10 --name bb-badnets -S data.root=/data/cifar-10
    .venv/bin/python presets/run.py backdoorbench-cifar10 --queue -S train.epochs=20   # then: dvc queue start
    .venv/bin/python presets/run.py backdoorbench-cifar10 --print                      # the command, not run

Overrides given with -S come after the preset's, so they win. Every key is checked against the
params schema before DVC starts, so a preset that no longer fits params.yaml fails at once.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def set_args(name: str, overrides: list[str]) -> list[str]:
    from ptdefense.tracking import flatten  # the same dotted keys the stages log to MLflow

    path = ROOT / "presets" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml"))
        raise SystemExit(f"error: no preset {name!r} in presets/; known: {', '.join(known)}")
    values = {key: ("null" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n..."))
              for key, value in flatten(yaml.safe_load(path.read_text())).items()}
    args = [f"{key}={value}" for key, value in values.items()] + overrides
    check(args)
    return [item for arg in args for item in ("-S", arg)]


def assign(tree: dict, dotted_key: str, value: object) -> None:
    """tree[a][b][c] = value for dotted_key "a.b.c", creating sections on the way."""
    head, _, rest = dotted_key.partition(".")
    if rest:
        assign(tree.setdefault(head, {}), rest, value)
    else:
        tree[head] = value


def check(assignments: list[str]) -> None:
    """Apply the assignments to params.yaml in memory and validate the result with the schema."""
    from ptdefense.params import validate_params

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        assign(params, key, yaml.safe_load(value))
    try:
        validate_params(params, "params.yaml with the preset's keys")
    except Exception as error:  # validate_params names each bad key and its valid values
        raise SystemExit(f"error: the preset does not fit params.yaml's schema:\n{error}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--name", help="the experiment's name (default: DVC picks one)")
    parser.add_argument("--queue", action="store_true", help="queue it (dvc exp run --queue) instead of running it")
    parser.add_argument("--print", action="store_true", help="print the dvc command instead of running it")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    command = ["dvc", "exp", "run", *(["--queue"] if args.queue else []), *(["-n", args.name] if args.name else []),
               *set_args(args.preset, args.overrides)]
    if args.print:
        print(shlex.join(command))
        return
    raise SystemExit(subprocess.run(command, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
