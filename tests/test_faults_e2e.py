"""Faults on the real components: stages killed midway (SIGKILL, SIGINT) under `dvc repro`, a real
`mlflow server` over HTTP that is up, dies midway, or was never there, and a changed seed.

One workspace with the tiny configuration is interrupted twice and finished; every output must
then equal, bit for bit, the uninterrupted run of the same params (`tiny_baseline`, see
conftest.py). Stages that ran uninterrupted in both (partial-train … abl, evaluate) show that two
runs with the same seed are bit-identical; the killed ones show that resuming changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvc_workspace import TINY, copy_repo, env, reproducible_state, run, wait_for
from team_services import free_port, start_mlflow_server, stop

pytestmark = pytest.mark.e2e


def _start(args: list[str], workspace: Path, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    """Start a command in its own process group, as a terminal does, its output going to `log`.

    SIGINT is reset to its default: when the test run itself was started in the background of a
    non-interactive shell (`bash .ci/run &`), SIGINT arrives ignored, and children inherit that."""
    handle = open(log, "w")
    return subprocess.Popen(args, cwd=workspace, env={**env(), **(extra_env or {})}, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> dict:
    """`dvc repro` killed with SIGKILL in train-backdoored, then with SIGINT (Ctrl-C) in
    clean-reference, each after its first epoch's checkpoint; then run to the end."""
    workspace = copy_repo(tmp_path_factory.mktemp("faults") / "repo", TINY)
    logs = tmp_path_factory.mktemp("logs")
    seen: dict = {"workspace": workspace}

    killed = _start(["dvc", "repro"], workspace, logs / "killed.log")
    checkpoint = workspace / "checkpoints/train-backdoored/01-backdoored.pt"
    wait_for(checkpoint.is_file, 600, "train-backdoored's first checkpoint", killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(60)
    seen["after_kill"] = {
        "returncode": killed.returncode,
        "checkpoint": checkpoint.is_file(),
        "model": (workspace / "models/backdoored").exists(),
        "metrics": (workspace / "metrics/train_backdoored.json").exists(),
        "poison_data_done": (workspace / "metrics/poison.json").is_file(),
        "leftovers": sorted(str(p.relative_to(workspace)) for folder in ("models", "metrics", "data")
                            for p in (workspace / folder).rglob("*.tmp")),
    }

    interrupted_run = _start(["dvc", "repro"], workspace, logs / "interrupted.log")
    checkpoint = workspace / "checkpoints/clean-reference/01-clean-reference.pt"
    wait_for(checkpoint.is_file, 600, "clean-reference's first checkpoint", interrupted_run)
    os.killpg(interrupted_run.pid, signal.SIGINT)
    interrupted_run.wait(120)
    seen["after_interrupt"] = {"returncode": interrupted_run.returncode, "checkpoint": checkpoint.is_file(),
                               "model": (workspace / "models/clean_reference").exists(),
                               "log": (logs / "interrupted.log").read_text()}
    seen["killed_log"] = (logs / "killed.log").read_text()
    finished = run(["dvc", "repro"], workspace)
    seen["finished"] = finished.stdout + finished.stderr
    return seen


def test_sigkill_leaves_no_half_written_output(interrupted):
    after = interrupted["after_kill"]
    assert after["returncode"] == -signal.SIGKILL
    assert after["poison_data_done"]  # the stage before it had finished and stays
    assert after["checkpoint"] and not after["model"] and not after["metrics"]
    assert after["leftovers"] == []


_STATUSES = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("ptdefense")
runs = client.search_runs([experiment.experiment_id], "tags.`ptdefense.stage` = 'clean-reference'")
print(json.dumps(sorted(run.info.status for run in runs)))
"""


def test_sigint_stops_cleanly_and_keeps_the_checkpoint(interrupted):
    after = interrupted["after_interrupt"]
    assert after["returncode"] != 0 and after["checkpoint"] and not after["model"]
    assert "resuming backdoored after epoch 1/2" in after["log"]  # the SIGKILLed stage resumed
    assert ("interrupted: clean-reference stopped before finishing, so DVC does not record its outputs; the "
            "epochs it finished are kept in checkpoints/clean-reference/") in after["log"]
    _, started, stage_output = after["log"].partition("Running stage 'clean-reference'")
    assert started and "Traceback" not in stage_output
    workspace = interrupted["workspace"]
    statuses = run([sys.executable, "-c", _STATUSES, f"sqlite:///{workspace / 'mlflow.db'}"], workspace)
    assert json.loads(statuses.stdout.strip().splitlines()[-1]) == ["FINISHED", "KILLED"]


def test_resumed_run_finishes_with_the_uninterrupted_results(interrupted, tiny_baseline):
    workspace = interrupted["workspace"]
    assert "resuming clean reference after epoch 1/2" in interrupted["finished"]
    assert not any((workspace / "checkpoints").glob("*/*.pt"))  # removed once each stage succeeded
    resumed = reproducible_state(workspace)
    assert resumed["outputs"].keys() == tiny_baseline["outputs"].keys()
    # every output but the metrics and the report that prints timings (the verdict stage's two included)
    assert len(resumed["outputs"]) == 22
    different = [path for path in resumed["outputs"] if resumed["outputs"][path] != tiny_baseline["outputs"][path]]
    assert different == [], different
    assert resumed["metrics"] == tiny_baseline["metrics"]
    assert "Data and pipelines are up to date" in run(["dvc", "status"], workspace).stdout


# --- a real MLflow tracking server ----------------------------------------------------------------

def _start_server(directory: Path) -> tuple[str, subprocess.Popen]:
    """A real `mlflow server` on sqlite, its artifacts in a folder."""
    return start_mlflow_server(directory, f"sqlite:///{directory / 'mlflow.db'}", str(directory / "artifacts"))


_READ_BACK = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("ptdefense")
out = {}
for run in client.search_runs([experiment.experiment_id], "tags.`ptdefense.role` = 'stage'"):
    stage = run.data.tags["ptdefense.stage"]
    out[stage] = {"status": run.info.status, "metrics": run.data.metrics, "params": run.data.params,
                  "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)],
                  "loss_steps": [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]}
    if stage == "partial-train":
        out[stage]["downloaded"] = client.download_artifacts(run.info.run_id, "partial/model.safetensors", sys.argv[2])
print(json.dumps(out))
"""


def test_stages_log_to_a_real_tracking_server(interrupted, tmp_path):
    workspace = interrupted["workspace"]
    uri, server = _start_server(tmp_path / "server")
    try:
        for stage in ("partial-train", "evaluate"):
            result = run(["dvc", "repro", "--force", "--single-item", stage], workspace,
                         extra_env={"MLFLOW_TRACKING_URI": uri})
            assert "WARNING: MLflow" not in result.stderr
        (tmp_path / "download").mkdir()
        read = run([sys.executable, "-c", _READ_BACK, uri, str(tmp_path / "download")], workspace)
    finally:
        stop(server)
    runs = json.loads(read.stdout.strip().splitlines()[-1])
    assert set(runs) == {"partial-train", "evaluate"} and all(r["status"] == "FINISHED" for r in runs.values())
    assert runs["partial-train"]["params"]["freeze_layers"] == "auto"
    assert runs["partial-train"]["loss_steps"] == [1]  # one epoch, logged per epoch
    assert "partial" in runs["partial-train"]["artifacts"]
    assert Path(runs["partial-train"]["downloaded"]).read_bytes() == \
        (workspace / "models/partial/model.safetensors").read_bytes()
    assert "pt.attack_success_rate" in runs["evaluate"]["metrics"]
    assert "plots" in runs["evaluate"]["artifacts"] or any("png" in a for a in runs["evaluate"]["artifacts"])
    # Uploaded over HTTP into the server's artifact store, not into the workspace.
    assert list((tmp_path / "server/artifacts").rglob("model.safetensors"))


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "MLflow: could not" in line]


def test_server_dying_midway_costs_no_results(interrupted, tiny_baseline, tmp_path):
    workspace = interrupted["workspace"]
    uri, server = _start_server(tmp_path / "server")
    log = tmp_path / "stage.log"
    stage = _start(["dvc", "repro", "--force", "--single-item", "train-backdoored"], workspace, log,
                   {"MLFLOW_TRACKING_URI": uri})
    try:
        wait_for(lambda: "[train] epoch 1:" in log.read_text(), 600, "the first epoch", stage)
        stop(server)  # the server goes down while the stage trains its second epoch
        assert stage.wait(600) == 0, log.read_text()[-3000:]
    finally:
        stop(server)
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
    output = log.read_text()
    assert len(_warnings(output)) == 1, output[-3000:]
    assert "outputs are written, tracking is skipped for this stage" in output and "Traceback" not in output
    state = reproducible_state(workspace)
    assert state["outputs"]["models/backdoored"] == tiny_baseline["outputs"]["models/backdoored"]
    assert state["metrics"]["train_backdoored.json"] == tiny_baseline["metrics"]["train_backdoored.json"]


def test_unreachable_server_warns_in_one_line_and_writes_outputs(interrupted, tiny_baseline):
    workspace = interrupted["workspace"]
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    before = (workspace / "metrics/evaluate.json").stat().st_mtime_ns
    result = run(["dvc", "repro", "--force", "--single-item", "evaluate"], workspace,
                 extra_env={"MLFLOW_TRACKING_URI": dead})
    warnings = _warnings(result.stdout + result.stderr)
    assert len(warnings) == 1 and f"could not start a run at {dead}" in warnings[0], warnings
    assert (workspace / "metrics/evaluate.json").stat().st_mtime_ns > before
    assert reproducible_state(workspace)["metrics"]["evaluate.json"] == tiny_baseline["metrics"]["evaluate.json"]


def test_required_tracking_turns_an_unreachable_server_into_an_error(interrupted):
    workspace = interrupted["workspace"]
    dead = f"http://127.0.0.1:{free_port()}"
    run(["git", "add", "-A"], workspace)  # as a team would: dvc.lock and the metrics in git
    run(["git", "commit", "-qm", "results", "--allow-empty"], workspace)
    params_path = workspace / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["mlflow"]["required"] = True
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = run(["dvc", "repro", "--force", "--single-item", "partial-train"], workspace, check=False,
                     extra_env={"MLFLOW_TRACKING_URI": dead})
    finally:
        params_path.write_text(original)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"error: MLflow: could not start a run at {dead}" in output
    assert "mlflow.required is true, so the stage fails" in output
    assert "Traceback" not in output and "epoch 1:" not in output  # failed before any training
    # DVC removed the stage's outputs before running it, as it does for any stage that fails; the
    # last good ones come back from DVC's cache (model) and git (metrics, `cache: false`).
    assert not (workspace / "metrics/partial_train.json").exists()
    run(["dvc", "checkout", "partial-train"], workspace)
    run(["git", "checkout", "--", "metrics/partial_train.json"], workspace)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], workspace).stdout


def test_another_seed_gives_other_outputs(interrupted, tiny_baseline):
    workspace = interrupted["workspace"]
    params_path = workspace / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["seed"] = 1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        run(["dvc", "repro", "train-backdoored"], workspace)
        state = reproducible_state(workspace)
    finally:
        params_path.write_text(original)
    for path in ("data/poisoned/train.npz", "data/truth/poison_indices.npz", "models/backdoored"):
        assert state["outputs"][path] != tiny_baseline["outputs"][path], path
    assert state["metrics"]["train_backdoored.json"] != tiny_baseline["metrics"]["train_backdoored.json"]
