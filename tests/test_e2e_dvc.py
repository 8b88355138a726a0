"""End to end: the real `dvc repro` and `dvc exp run` on a tiny configuration, in a copy of the repo.

Checks the metrics file, MLflow's runs (one per stage, grouped, with params and metrics, read back
through MlflowClient), caching under `dvc exp run -S freeze_layers=…`, and the clear error on a bad
params.yaml.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dvc_workspace import run, wait_for

STAGES = ["poison-data", "train-backdoored", "partial-train", "isolate", "verdict", "finetune", "abl",
          "clean-reference", "evaluate"]
METHODS = ("no_defense", "abl", "pt", "clean_reference")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workspace(tiny_workspace) -> Path:
    return tiny_workspace


_QUERY = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("ptdefense")
runs = []
for run in client.search_runs([experiment.experiment_id], sys.argv[2]):
    runs.append({"run_id": run.info.run_id, "status": run.info.status, "tags": run.data.tags,
                 "start_time": run.info.start_time, "end_time": run.info.end_time,
                 "params": run.data.params, "metrics": run.data.metrics,
                 "train_loss_steps": [p.step for p in client.get_metric_history(run.info.run_id, "train_loss")]})
parents = {run["tags"].get("mlflow.parentRunId") for run in runs} - {None}
print(json.dumps({"runs": runs, "parents": {pid: client.get_run(pid).data.params for pid in parents},
                  "parent_metrics": {pid: client.get_run(pid).data.metrics for pid in parents}}))
"""


def _mlflow_runs(workspace: Path, filter_string: str) -> dict:
    """Query the tracking store through MlflowClient, in a child process.

    Keeping mlflow (sqlalchemy, pyarrow, pandas, each with native threads) out of the test
    process leaves the unit tests that train torch models in a process of their own making.
    """
    result = run([sys.executable, "-c", _QUERY, f"sqlite:///{workspace / 'mlflow.db'}", filter_string], workspace)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reproduced(tiny_reproduced, tiny_baseline) -> subprocess.CompletedProcess:
    return tiny_reproduced


def test_repro_runs_every_stage_and_writes_sane_metrics(workspace, reproduced):
    for stage in STAGES:
        assert f"Running stage '{stage}'" in reproduced.stdout
    metrics = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert set(METHODS) <= set(metrics)
    for method in METHODS:
        for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy", "defense_effectiveness_rating"):
            assert 0.0 <= metrics[method][key] <= 1.0, (method, key)
        assert metrics[method]["wall_seconds"] > 0 and metrics[method]["sample_epochs"] > 0, method
    assert metrics["no_defense"]["defense_effectiveness_rating"] == 0.5  # no change against itself
    assert metrics["no_defense"]["clean_accuracy"] > 0.3  # learned something beyond chance (0.1)
    assert metrics["poison_count"] == 300  # round(0.1 × 3000)
    for method in ("pt", "abl"):  # the methods that isolate
        for key in ("isolation_recall", "isolation_false_positive_rate"):
            assert 0.0 <= metrics[method][key] <= 1.0
    assert "isolation_recall" not in metrics["no_defense"] and "isolation_recall" not in metrics["clean_reference"]
    assert metrics["abl"]["isolated_count"] == 30  # abl.isolation_ratio 1% of 3000
    # PT's finetune leaves out every isolated sample and unlearns only the confident ones (the default).
    finetuned = json.loads((workspace / "metrics/finetune.json").read_text())
    isolated = json.loads((workspace / "metrics/isolate.json").read_text())
    saved = np.load(workspace / "data/isolation/isolated.npz")
    assert set(saved["confident_indices"].tolist()) <= set(saved["isolated_indices"].tolist())
    assert finetuned["isolated_count"] == isolated["isolated_count"] == len(saved["isolated_indices"])
    assert finetuned["retained_count"] == 3000 - isolated["isolated_count"]
    assert finetuned["unlearned_count"] == isolated["confident_count"] == len(saved["confident_indices"])
    # The clean reference trains on the samples the attacker did not touch, with the victim's epochs.
    assert metrics["clean_reference"]["sample_epochs"] == 2 * (3000 - 300)
    report = (workspace / "reports/evaluate.md").read_text()
    for title in ("no defense", "ABL", "PT", "clean reference"):
        assert f"| {title}" in report
    for output in ("models/backdoored/model.safetensors", "models/defended/model.json", "models/abl/model.json",
                   "models/clean_reference/model.json", "data/isolation/losses.csv", "data/abl/isolation.npz",
                   "plots/loss_histogram.png", "plots/poison_examples.png", "plots/isolation_sweep.png",
                   "plots/methods.png", "reports/evaluate.md"):
        assert (workspace / output).is_file(), output
    sweep = (workspace / "plots/isolation_sweep.csv").read_text().splitlines()
    assert sweep[0].startswith("isolation_ratio,pt_precision,pt_recall")
    assert len(sweep) == 1 + 31


def test_the_verdict_agrees_with_isolation_and_tags_the_pipeline(workspace, reproduced):
    isolation = json.loads((workspace / "metrics/isolate.json").read_text())
    judged = json.loads((workspace / "reports/verdict.json").read_text())
    assert judged["verdict"] in ("poison_found", "inconclusive", "no_poison_found")
    assert (judged["verdict"] == "poison_found") == (isolation["isolated_count"] > 0)
    assert judged["verdict_clear_z"] == 3.0 and judged["verdict_reason"]
    assert set(judged["z"]) == {"content_disagreement", "easy_disagreement", "diversity_gap", "log_spectral_ratio",
                                 "easy_tail"}
    assert set(judged["z"]["diversity_gap"]) == set(isolation["diversity_gap"])  # every label scored
    assert f"# Verdict: {judged['verdict']}" in (workspace / "reports/verdict.md").read_text()
    runs = _mlflow_runs(workspace, "tags.`ptdefense.stage` = 'verdict'")
    assert runs["runs"][0]["tags"]["ptdefense.verdict"] == judged["verdict"]


def test_plots_show_renders_every_declared_plot(workspace, reproduced):
    import re

    from PIL import Image

    run(["dvc", "plots", "show", "-o", "rendered"], workspace)
    page = (workspace / "rendered/index.html").read_text()
    for plot in ("isolation_precision", "isolation_recall", "clean_accuracy", "attack_success_rate",
                 "loss_histogram.png", "isolation_sweep.png", "methods.png"):
        assert plot in page, plot
    # The page's images are the tracked PNGs, and they decode (what a browser draws).
    sources = set(re.findall(r'<img src="([^"]+)"', page))
    for name in ("loss_histogram.png", "methods.png"):
        shown = [source for source in sources if source.endswith(f"plots_{name}")]
        assert shown, (name, sources)
        rendered = workspace / "rendered" / shown[0]
        assert rendered.read_bytes() == (workspace / "plots" / name).read_bytes()
        with Image.open(rendered) as image:
            image.load()
            assert min(image.size) > 100


def test_status_is_clean_and_metrics_show(workspace, reproduced):
    status = run(["dvc", "status"], workspace)
    assert "up to date" in status.stdout
    shown = run(["dvc", "metrics", "show"], workspace)
    assert "metrics/evaluate.json" in shown.stdout and "pt.attack_success_rate" in shown.stdout


@pytest.mark.parametrize("script, expected", [
    ("stages/finetune.py", {"finetune", "evaluate"}),
    ("stages/partial_train.py", {"partial-train", "isolate", "verdict", "finetune", "evaluate"}),
    # isolation's candidates use the verdict's z-score; abl takes the lowest-loss rule from its own
    # module (defenses/lowest_loss.py), so a change to PT's isolation does not re-run it
    ("src/ptdefense/defenses/verdict.py", {"isolate", "verdict", "finetune", "evaluate"}),
    ("src/ptdefense/evaluation.py", {"evaluate"}),
    ("src/ptdefense/scoring.py", {"train-backdoored", "finetune", "abl", "clean-reference", "evaluate"}),
])
def test_an_edit_marks_only_the_stages_that_import_it_and_their_descendants(workspace, reproduced, script,
                                                                             expected):
    """dvc.yaml's exact deps: an edit to one stage's code re-runs that stage and what depends on its
    outputs, nothing upstream (before the split, every stage listed pipeline.py: any edit re-ran all)."""
    path = workspace / script
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        status = json.loads(run(["dvc", "status", "--json"], workspace).stdout)
        changed = {name for name, entries in status.items()
                   if any("changed deps" in entry for entry in entries if isinstance(entry, dict))}
        # A stage downstream of a changed one is stale too, but dvc status names only the direct ones, and
        # a dry run cannot see that the changed stage's outputs will change: --force-downstream lists them.
        dry = run(["dvc", "repro", "--dry", "--force-downstream"], workspace).stdout
        would_run = {stage for stage in STAGES if f"Running stage '{stage}'" in dry}
    finally:
        path.write_text(original)
    assert changed <= expected and changed, (changed, expected)
    assert would_run == expected, would_run
    assert "up to date" in run(["dvc", "status"], workspace).stdout


def test_shared_remote_lets_a_fresh_clone_pull_instead_of_training(workspace, reproduced, tmp_path):
    """A team's setup: results pushed to a DVC remote (a local directory here, the same commands
    for S3 or SSH); a teammate's fresh clone pulls them and `dvc repro` has nothing to do."""
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], workspace)
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-qm", "results and the shared remote"], workspace)
    pushed = run(["dvc", "push"], workspace)
    assert "pushed" in pushed.stdout
    assert "Cache and remote 'shared' are in sync" in run(["dvc", "status", "--cloud"], workspace).stdout

    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", str(workspace), str(clone)], tmp_path)
    assert not (clone / "models/backdoored/model.safetensors").exists()
    before_pull = run(["dvc", "status", "--cloud"], clone).stdout
    assert "deleted:" in before_pull and "missing:" not in before_pull  # all on the remote, none lost
    run(["dvc", "pull"], clone)
    for path in ("models/backdoored/model.safetensors", "models/defended/model.safetensors", "data/poisoned/train.npz"):
        assert (clone / path).read_bytes() == (workspace / path).read_bytes(), path
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    repro = run(["dvc", "repro"], clone)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert "Data and pipelines are up to date" in repro.stdout
    assert not (clone / "mlflow.db").exists()  # nothing ran, so nothing was trained or logged
    assert "Cache and remote 'shared' are in sync" in run(["dvc", "status", "--cloud"], clone).stdout


def test_mlflow_holds_one_grouped_run_per_stage(workspace, reproduced):
    assert (workspace / "mlflow.db").is_file(), "the default store is sqlite:///<repo root>/mlflow.db"
    queried = _mlflow_runs(workspace, "tags.`ptdefense.role` = 'stage'")
    stage_runs = queried["runs"]
    assert sorted(run["tags"]["ptdefense.stage"] for run in stage_runs) == sorted(STAGES)
    parents = {run["tags"]["mlflow.parentRunId"] for run in stage_runs}
    groups = {run["tags"]["ptdefense.pipeline"] for run in stage_runs}
    assert len(parents) == 1 and len(groups) == 1
    parent = parents.pop()
    # The parent holds every param and the headline metrics, for side-by-side comparison in the UI.
    assert queried["parents"][parent]["freeze_layers"] == "auto"
    assert "pt.attack_success_rate" in queried["parent_metrics"][parent]
    assert "abl.attack_success_rate" in queried["parent_metrics"][parent]
    by_stage = {run["tags"]["ptdefense.stage"]: run for run in stage_runs}
    assert by_stage["partial-train"]["params"]["freeze_layers"] == "auto"
    # auto's depth, read off the data: logged with the run, and the one the saved partial model froze
    used = by_stage["partial-train"]["tags"]["freeze_layers_used"]
    assert used in {"1", "2", "3"}
    assert by_stage["isolate"]["params"]["freeze_layers_used"] == used
    assert by_stage["train-backdoored"]["params"]["train.epochs"] == "2"
    assert "attack_success_rate" in by_stage["train-backdoored"]["metrics"]
    assert by_stage["train-backdoored"]["train_loss_steps"] == [1, 2]  # per-epoch metrics
    assert "pt.attack_success_rate" in by_stage["evaluate"]["metrics"]
    assert "pt.isolation_recall" in by_stage["evaluate"]["metrics"]
    assert "clean_reference.clean_accuracy" in by_stage["evaluate"]["metrics"]
    assert all(run["status"] == "FINISHED" for run in stage_runs)


def test_exp_run_freeze_layers_reruns_only_downstream_stages(workspace, reproduced):
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-qm", "after repro", "--allow-empty"], workspace)
    result = run(["dvc", "exp", "run", "-S", "freeze_layers=2", "--name", "freeze2"], workspace)
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout}
    assert ran == {"partial-train", "isolate", "verdict", "finetune", "evaluate"}
    assert "Stage 'poison-data' didn't change, skipping" in result.stdout
    assert "Stage 'train-backdoored' didn't change, skipping" in result.stdout

    runs = _mlflow_runs(workspace, "tags.`ptdefense.pipeline` = 'freeze2' and tags.`ptdefense.role` = 'stage'")["runs"]
    assert sorted(run["tags"]["ptdefense.stage"] for run in runs) == ["evaluate", "finetune", "isolate", "partial-train",
                                                                      "verdict"]
    assert {run["tags"]["freeze_layers"] for run in runs} == {"2"}


def test_exp_run_finetune_unlearn_reruns_the_finetune_with_that_choice(workspace, reproduced):
    """`-S finetune.unlearn=none|all`: the finetune unlearns nothing, or every isolated sample, and
    leaves out every isolated one either way. The tiny set isolates nothing by `auto`, so the runs
    isolate by `ratio` (10%); the second choice re-runs only the finetune and evaluate."""
    for choice, rerun in (("none", {"isolate", "verdict", "finetune", "evaluate"}), ("all", {"finetune", "evaluate"})):
        result = run(["dvc", "exp", "run", "-S", "isolation.method=ratio", "-S", f"finetune.unlearn={choice}",
                      "--name", f"unlearn-{choice}"], workspace)
        assert {stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout} == rerun, choice
        finetuned = json.loads((workspace / "metrics/finetune.json").read_text())
        assert finetuned["isolated_count"] == 300 and finetuned["retained_count"] == 2700
        assert finetuned["unlearned_count"] == (0 if choice == "none" else 300), choice


def test_exp_run_attack_name_reruns_the_whole_pipeline_with_that_attack(workspace, reproduced):
    """`dvc exp run -S attack.name=…`: the attack's own section is used and every stage re-runs."""
    result = run(["dvc", "exp", "run", "-S", "attack.name=sig", "-S", "attack.sig.delta=30.0", "--name", "sig"],
                  workspace)
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout}
    assert ran == set(STAGES)
    poison = json.loads((workspace / "metrics/poison.json").read_text())
    assert poison["clean_label"] == 1
    import numpy as np

    labels = np.load(workspace / "data/poisoned/train.npz")["labels"]
    assert poison["poison_count"] == int((labels == 0).sum()) // 2  # standard rate: half the target class
    evaluated = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert 0.0 <= evaluated["no_defense"]["attack_success_rate"] <= 1.0
    runs = _mlflow_runs(workspace, "tags.`ptdefense.pipeline` = 'sig' and tags.`ptdefense.stage` = 'poison-data'")["runs"]
    assert [run["tags"]["attack"] for run in runs] == ["sig"]
    assert runs[0]["params"]["attack.sig.delta"] == "30.0"


def test_bad_params_fail_before_any_work_with_a_clear_message(workspace, reproduced):
    params_path = workspace / "params.yaml"
    original = params_path.read_text()
    before = (workspace / "metrics/evaluate.json").read_text()
    try:
        params = yaml.safe_load(original)
        params["attack"]["poison_rate"] = 1.5
        params["train"]["epochz"] = 3
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        result = run(["dvc", "repro"], workspace, check=False)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "attack.poison_rate" in output and "less than 1" in output
        assert "train.epochz" in output and "unknown key" in output
        assert "Traceback" not in output
        assert (workspace / "metrics/evaluate.json").read_text() == before
    finally:
        params_path.write_text(original)


def test_queued_grid_runs_every_combination_into_one_tracking_store(workspace, reproduced):
    """`dvc exp run --queue -S a=1,2 -S b=x` queues the grid; `dvc queue start --jobs 2` runs it in two
    workers at once, in temporary copies, whose stages log to the workspace's one sqlite MLflow store,
    each experiment under its own name."""
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-qm", "before the sweep", "--allow-empty"], workspace)
    queued = run(["dvc", "exp", "run", "--queue", "-S", "freeze_layers=2,3", "-S", "isolation.method=ratio",
                  "-S", "isolation.ratio=0.05"], workspace)
    assert queued.stdout.count("Queued experiment") == 2, queued.stdout
    run(["dvc", "queue", "start", "--jobs", "2"], workspace)

    def queue_done() -> bool:
        time.sleep(3)  # `dvc queue status` itself takes a second or two; no need to ask more often
        status = run(["dvc", "queue", "status"], workspace).stdout
        return "Queued" not in status and "Running" not in status

    wait_for(queue_done, 900, "the queue to finish")
    status = run(["dvc", "queue", "status"], workspace).stdout
    assert status.count("Success") == 2, status

    shown = json.loads(run(["dvc", "exp", "show", "--json"], workspace).stdout)
    grid = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            params = data["params"]["params.yaml"]["data"]
            grid[(params["freeze_layers"], params["isolation"]["ratio"])] = (
                experiment["name"], data["metrics"]["metrics/evaluate.json"]["data"]["pt"])
    assert set(grid) >= {(2, 0.05), (3, 0.05)}, grid
    for (freeze, ratio), (name, pt) in grid.items():
        if (freeze, ratio) in {(2, 0.05), (3, 0.05)}:
            assert pt["isolated_count"] == round(ratio * 3000), (name, pt)

    names = {name for name, _ in grid.values()}
    runs = _mlflow_runs(workspace, "tags.`ptdefense.role` = 'stage' and tags.`ptdefense.stage` = 'evaluate'")["runs"]
    by_pipeline = {run["tags"]["ptdefense.pipeline"]: run for run in runs}
    for name in names:  # one pipeline group per queued experiment, in the workspace's store
        assert name in by_pipeline, (name, sorted(by_pipeline))
        assert by_pipeline[name]["tags"]["dvc.exp_name"] == name
    assert not list((workspace / ".dvc/tmp/exps").glob("**/mlflow.db"))  # no store left in a temp copy
    # The two workers ran at the same time: the two experiments' stage runs overlap in time.
    stages = _mlflow_runs(workspace, "tags.`ptdefense.role` = 'stage'")["runs"]
    spans = [(min(run["start_time"] for run in stages if run["tags"].get("dvc.exp_name") == name),
              max(run["end_time"] for run in stages if run["tags"].get("dvc.exp_name") == name)) for name in names]
    assert len(spans) == 2 and max(start for start, _ in spans) < min(end for _, end in spans), spans
