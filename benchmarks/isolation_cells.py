"""Benchmark: PT's isolation and verdict on cells of the robustness matrix, the isolate stage only.

A cheaper look than benchmarks/robustness.py: each cell's workspace runs `dvc repro partial-train`
(poison-data and partial-train, on the committed params), then PT's isolation is scored against the
true poison. No defense, ABL and the clean reference are not trained. Figures, not assertions.

    .venv/bin/python benchmarks/isolation_cells.py --cells 'small-*' 'unseen-*' 'clean-mnist-5k'

Results: benchmarks/results/isolation_cells.json, one entry per cell (re-running a cell replaces it).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dvc_workspace import copy_repo, env  # noqa: E402
from robustness import cell_params, commit, write_report  # noqa: E402
from robustness_cells import CELLS, EXTRA_ISOLATION_CELLS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "isolation_cells.json"


def partial_workspace(cell: dict, work: Path, datasets: Path) -> Path:
    workspace = work / cell["id"]
    if not (workspace / "models" / "partial" / "model.json").is_file():
        if not (workspace / ".git").is_dir():
            workspace.mkdir(parents=True, exist_ok=True)
            copy_repo(workspace, {**cell_params(cell, datasets, work), "mlflow": {"enabled": False}})
        subprocess.run([str(Path(sys.executable).with_name("dvc")), "repro", "partial-train"], cwd=workspace,
                       env=env(), check=True)
    return workspace


def isolate_cell(workspace: Path, current_isolation: bool = False) -> dict:
    """PT's isolation on the workspace's partial model, scored; with the isolation and verdict
    params of this checkout's params.yaml when `current_isolation` (a workspace of an earlier commit)."""
    import torch

    from ptdefense.data.dataset import ImageSet
    from ptdefense.defenses.isolation import isolate_samples
    from ptdefense.defenses.verdict import verdict
    from ptdefense.metrics import isolation_metrics
    from ptdefense.models.io import load_model
    from ptdefense.params import load_params

    params = load_params(workspace / "params.yaml")
    if current_isolation:
        current = load_params(ROOT / "params.yaml")
        params = params.model_copy(update={"isolation": current.isolation, "verdict": current.verdict})
    train = ImageSet.load(workspace / "data" / "poisoned" / "train.npz")
    truth = torch.from_numpy(np.load(workspace / "data" / "truth" / "poison_indices.npz")["poison_indices"]).long()
    model, spec = load_model(workspace / "models" / "partial", "partial-train")
    started = time.perf_counter()
    result, _ = isolate_samples(model, train, params.isolation, spec["num_classes"], spec["architecture"],
                                spec.get("width"), spec["freeze_layers"], torch.device("cpu"), params.seed + 3)
    seconds = time.perf_counter() - started
    # The final scores, for a look at other cuts without re-running the quarantine models.
    np.savez_compressed(workspace / f"scores-{commit()}.npz", scores=result.scores.numpy(),
                        isolated=result.isolated.numpy(), labels=train.labels.numpy(), poison=truth.numpy())
    judged = verdict(result.details, int(result.isolated.numel()), params.verdict.clear_z)
    scores = isolation_metrics(result.isolated, truth, len(train)) if truth.numel() else {}
    return {"train_size": len(train), "poison_count": int(truth.numel()), "isolated_count": int(result.isolated.numel()),
            **scores, "candidates": result.details.get("candidates", {}),
            "confirmation": result.details.get("confirmation", {}), "pooled_test": result.details.get("pooled_test"),
            "seed_copies": result.details.get("seed_copies"), "modes": result.details.get("modes"),
            "unseparated_classes": result.details.get("unseparated_classes"), "verdict": judged["verdict"],
            "verdict_reason": judged["verdict_reason"], "isolate_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", required=True, help="glob patterns of cell ids (robustness.py --list)")
    parser.add_argument("--work", type=Path, default=Path("~/.cache/ptdefense/isolation-cells").expanduser())
    parser.add_argument("--datasets", type=Path, default=Path("~/.cache/ptdefense/datasets").expanduser())
    parser.add_argument("--partial-from", metavar="COMMIT",
                        help="reuse the partial models trained by this earlier commit's run of the cells (valid while "
                             "partial-train's code and params are unchanged: a change to isolation only)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    chosen = [cell for cell in CELLS + EXTRA_ISOLATION_CELLS
              if any(fnmatch.fnmatch(cell["id"], pattern) for pattern in args.cells)]
    for cell in chosen:
        print(f"== {cell['id']}", file=sys.stderr, flush=True)
        workspace = partial_workspace(cell, args.work / (args.partial_from or commit()), args.datasets)
        reused = {"partial_from": args.partial_from} if args.partial_from else {}
        results[cell["id"]] = {"commit": commit(), **reused, **isolate_cell(workspace, bool(args.partial_from))}
        row = results[cell["id"]]
        print(json.dumps({key: row.get(key) for key in ("isolated_count", "isolation_precision", "isolation_recall",
                                                         "isolation_false_positive_rate", "verdict")}), flush=True)
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        write_report()


if __name__ == "__main__":
    main()
