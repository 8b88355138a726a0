"""Benchmark: the robustness matrix, PT's standing quality gate. Figures, not assertions.

Every cell runs the real pipeline (`dvc repro` in a copy of the repository) on the committed
params.yaml, with only the cell's data and attack changed, and no tuning per cell: no defense, PT,
ABL and the clean reference on the same poisoned data.

    .venv/bin/python benchmarks/robustness.py --list
    .venv/bin/python benchmarks/robustness.py --cells 'small-*' 'unseen-*'     # run (resumes), then write
    .venv/bin/python benchmarks/robustness.py --render                          # docs/robustness.md only

- Each cell's result is cached in benchmarks/results/robustness/<cell>.json, keyed by the code's
  commit and the overrides; a cached cell is not run again. A killed run resumes: each cell's
  workspace (under --work) keeps its DVC cache and per-epoch checkpoints.
- `--adopt CELL=DIR` records a cell from a workspace that already ran it (for instance the repository
  itself: its committed default run is the cell fashion_mnist-full-badnets-std), after checking that
  the workspace's params.yaml is the committed one with the cell's data and attack, and that
  `dvc status` is clean there.
- `--set key=value` overrides a params key in every cell (e.g. `--set train.precision=bf16` on a
  machine with native bf16); the overrides are recorded in each result. The matrix itself runs the
  committed defaults.
- MNIST and CIFAR-10 come from data/offline_copies.py (built on first use into --datasets).
- Cells outside the matrix (robustness_cells.EXTRA_CELLS, e.g. small-cifar10-10k-badnets) run like
  any cell, also under the default `--cells '*'`; they are rendered in their own table and kept out
  of robustness.json.
- Results: benchmarks/results/robustness.json (`{"cells": [...]}`), and docs/robustness.md, rendered
  from it with each cell's pass/fail against the issue's criteria.
"""

from __future__ import annotations

import argparse
import filecmp
import fnmatch
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from dvc_workspace import code_commit as commit, copy_repo, env, merge  # noqa: E402
from robustness_cells import CELLS, EXTRA_CELLS, unseen_trigger_folder  # noqa: E402
from robustness_report import render, render_extra, render_isolation  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CELL_RESULTS = RESULTS / "robustness"
METHODS = ("no_defense", "pt", "abl", "clean_reference")
ISOLATION_KEYS = ("isolation_precision", "isolation_recall", "isolation_false_positive_rate", "isolated_count")


def parse_overrides(pairs: list[str]) -> dict:
    overrides: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        *parents, leaf = key.split(".")
        target = overrides
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(value)
    return overrides


def cell_params(cell: dict, datasets: Path, work: Path) -> dict:
    data = {"name": cell["dataset"], "train_limit": cell["train_size"]}
    if cell["dataset"] in ("mnist", "cifar10"):
        data["root"] = str(datasets / cell["dataset"])
        if not (datasets / cell["dataset"]).is_dir():
            subprocess.run([sys.executable, str(ROOT / "data" / "offline_copies.py"), cell["dataset"], "--dest",
                            str(datasets)], check=True)
    attack = {"name": cell["attack"], "poison_rate": cell.get("poison_rate_param")}
    if cell["attack"] == "unseen":
        root, poison_list = unseen_trigger_folder(work / "unseen-data", cell)
        data = {"name": "imagefolder", "root": str(root), "poison_indices": str(poison_list)}
        attack = {"name": "none", "poison_rate": None}
    elif cell["attack"] == "none":
        attack = {"name": "none", "poison_rate": None}
    return {"data": data, "attack": attack}


def run_cell(cell: dict, overrides: dict, datasets: Path, work: Path) -> dict:
    workspace = work / cell["id"]
    if not (workspace / ".git").is_dir():
        workspace.mkdir(parents=True, exist_ok=True)
        copy_repo(workspace, merge(cell_params(cell, datasets, work), overrides))
    started = time.perf_counter()
    # No time limit (a cell can take hours); a killed run resumes from the workspace.
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "repro"], cwd=workspace, env=env(), check=True)
    return summarise(cell, workspace, time.perf_counter() - started)


def adopt_cell(cell: dict, workspace: Path, datasets: Path, work: Path) -> dict:
    """The cell's result from a workspace where it already ran: only if that workspace ran exactly the
    cell (committed params with the cell's data and attack, no overrides) and its outputs are current."""
    wanted = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), cell_params(cell, datasets, work))
    found = yaml.safe_load((workspace / "params.yaml").read_text())
    if found != wanted:
        raise SystemExit(f"--adopt {cell['id']}: {workspace}/params.yaml is not the committed params with this "
                         "cell's data and attack; run the cell instead (--cells)")
    differing = stage_code_differences(workspace)
    if differing:
        raise SystemExit(f"--adopt {cell['id']}: {workspace} ran other stage code than this checkout "
                         f"({', '.join(differing[:5])}); run the cell instead (--cells)")
    status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", "--json"], cwd=workspace,
                            env=env(), capture_output=True, text=True, check=True).stdout
    if json.loads(status or "{}"):
        raise SystemExit(f"--adopt {cell['id']}: `dvc status` in {workspace} is not clean; run `dvc repro` there first")
    result = summarise(cell, workspace, None)
    result["adopted_from"] = "the repository" if workspace == ROOT else str(workspace)
    result["ran_at"] = commit() if workspace == ROOT else source_commit(workspace)
    return result


def stage_code_differences(workspace: Path) -> list[str]:
    """The files of the stages' code (src/, stages/, dvc.yaml) that differ between the workspace and
    this checkout: a workspace is adopted only if it ran the code this checkout would run."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "src",
                             "stages", "dvc.yaml"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in filter(None, listed.split("\0"))
            if not (ROOT / name).is_file() or not (workspace / name).is_file()
            or not filecmp.cmp(ROOT / name, workspace / name, shallow=False)]


def source_commit(workspace: Path) -> str | None:
    """The commit a workspace was copied from: named in its own commit ("workspace of <hash>"), or,
    for workspaces made before that, the --work layout's <commit>/<cell>."""
    subjects = subprocess.run(["git", "log", "--reverse", "--format=%s"], cwd=workspace, capture_output=True,
                              text=True).stdout.splitlines()
    if subjects and subjects[0].startswith("workspace of "):  # the copy's own (first) commit
        return subjects[0].removeprefix("workspace of ")
    name = workspace.parent.name
    if not re.fullmatch(r"[0-9a-f]{7,40}", name):  # a hash, not a branch or tag that moves
        return None
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--short", f"{name}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def summarise(cell: dict, workspace: Path, seconds: float) -> dict:
    evaluated = json.loads((workspace / "metrics" / "evaluate.json").read_text())
    judged = json.loads((workspace / "reports" / "verdict.json").read_text())
    result = {key: cell[key] for key in ("id", "dataset", "train_size", "attack")}
    result["poison_rate"] = cell.get("poison_rate", 0.0)
    unseen_asr = unseen_attack_success(cell, workspace) if cell["attack"] == "unseen" else {}
    if "clean_reference" not in evaluated and result["poison_rate"] == 0:
        # Nothing is poisoned, so the clean-reference stage skips itself: its model would be the
        # no-defense one, trained on the same (all clean) samples.
        evaluated = {**evaluated, "clean_reference": evaluated["no_defense"]}
        result["clean_reference_is_no_defense"] = True
    for method in METHODS:
        row = evaluated[method]
        result[method] = {"clean_accuracy": row["clean_accuracy"],
                          "attack_success_rate": unseen_asr.get(method, row["attack_success_rate"])}
        if method in ("pt", "abl"):
            result[method].update({key: row.get(key) for key in ISOLATION_KEYS})
    result["pt"].update({"verdict": judged["verdict"], "verdict_reason": judged["verdict_reason"],
                         "wall_seconds": evaluated["pt"].get("wall_seconds")})
    result["repro_seconds"] = seconds
    return result


def unseen_attack_success(cell: dict, workspace: Path) -> dict:
    """The unseen trigger is not registered, so evaluate scores no ASR: score each model here on the
    cell's own triggered test images."""
    import torch

    from ptdefense.metrics import attack_success_rate
    from ptdefense.models.io import load_model, skipped_reason
    from ptdefense.training import predict

    arrays = np.load(workspace.parent / "unseen-data" / f"{cell['id']}-triggered-test.npz")
    images, targets = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["attack_targets"])
    models = {"no_defense": "models/backdoored", "pt": "models/defended", "abl": "models/abl",
              "clean_reference": "models/clean_reference"}
    scores = {}
    for method, directory in models.items():
        if skipped_reason(workspace / directory) is None:
            model, _ = load_model(workspace / directory, method)
            scores[method] = attack_success_rate(predict(model, images, torch.device("cpu")), targets)
    return scores


def write_cell(result: dict, key: dict) -> None:
    """A cell's cached result, with the key (commit, overrides) it is valid for."""
    (CELL_RESULTS / f"{result['id']}.json").write_text(json.dumps({**result, "key": key}, indent=2, sort_keys=True) + "\n")


def write_report(cells: list[dict] | None = None) -> None:
    """docs/robustness.md: the full cells, then the isolate-only ones (benchmarks/isolation_cells.py)."""
    if cells is None:
        cells = [json.loads((CELL_RESULTS / f"{cell['id']}.json").read_text()) for cell in CELLS
                 if (CELL_RESULTS / f"{cell['id']}.json").is_file()]
    isolation_file = RESULTS / "isolation_cells.json"
    isolation_rows = json.loads(isolation_file.read_text()) if isolation_file.is_file() else {}
    order = [cell["id"] for cell in CELLS]
    extra = [json.loads((CELL_RESULTS / f"{cell['id']}.json").read_text()) for cell in EXTRA_CELLS
             if (CELL_RESULTS / f"{cell['id']}.json").is_file()]
    (ROOT / "docs" / "robustness.md").write_text(render(cells, order) + render_extra(extra)
                                                 + render_isolation(isolation_rows, order))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="*", default=["*"], help="glob patterns of cell ids (default: all)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--render", action="store_true", help="only write docs/robustness.md from the results")
    parser.add_argument("--adopt", action="append", default=[], metavar="CELL=DIR",
                        help="record CELL from the workspace DIR, where it already ran (checked)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=Path("~/.cache/ptdefense/robustness").expanduser())
    parser.add_argument("--datasets", type=Path, default=Path("~/.cache/ptdefense/datasets").expanduser())
    args = parser.parse_args()
    chosen = [cell for cell in CELLS + EXTRA_CELLS
              if any(fnmatch.fnmatch(cell["id"], pattern) for pattern in args.cells)]
    if args.list:
        for cell in chosen:
            print(cell["id"])
        return
    overrides = parse_overrides(args.overrides)
    key = {"commit": commit(), "overrides": overrides}
    CELL_RESULTS.mkdir(parents=True, exist_ok=True)
    for pair in args.adopt:
        cell_id, _, directory = pair.partition("=")
        cell = next((cell for cell in CELLS + EXTRA_CELLS if cell["id"] == cell_id), None)
        if cell is None or overrides:
            raise SystemExit(f"--adopt {pair}: {'no such cell (see --list)' if cell is None else 'not with --set'}")
        write_cell(adopt_cell(cell, Path(directory).resolve(), args.datasets, args.work / key["commit"]), key)
    for cell in [] if args.render or args.adopt else chosen:
        cached = CELL_RESULTS / f"{cell['id']}.json"
        if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
            continue
        print(f"== {cell['id']}", file=sys.stderr, flush=True)
        write_cell(run_cell(cell, overrides, args.datasets, args.work / key["commit"]), key)
    cells = [json.loads((CELL_RESULTS / f"{cell['id']}.json").read_text()) for cell in CELLS
             if (CELL_RESULTS / f"{cell['id']}.json").is_file()]
    (RESULTS / "robustness.json").write_text(json.dumps({"cells": cells}, indent=2, sort_keys=True) + "\n")
    write_report(cells)
    print(f"{len(cells)} of {len(CELLS)} cells measured; docs/robustness.md written", file=sys.stderr)


if __name__ == "__main__":
    main()
