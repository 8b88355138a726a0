"""docs/team.md, followed step by step on real services: an S3-compatible server (moto), a
PostgreSQL cluster behind `mlflow server` (artifacts in the same bucket), a bare git repository as
the team's remote, and four checkouts: the maintainer's, two machines running different
experiments at the same time, and a colleague who pulls both.

Every block of the page that starts with `# on:` is run, in the page's order, by bash; the two
machines' blocks run concurrently. The tiny configuration keeps the pipeline to about a minute.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dvc_workspace import REPO, TINY, copy_repo, env, run, wait_for
from team_services import S3_CREDENTIALS, answers, free_port, start_postgres, start_s3, stop

pytestmark = pytest.mark.e2e

DOC = REPO / "docs" / "team.md"
BUCKET = "ptdefense-team"
EXPERIMENTS = {"freeze2": "machine A", "ratio10": "machine B"}


def doc_steps() -> list[tuple[str, str]]:
    """(role, script) for each ```bash block of the page whose first line is `# on: <role>`."""
    steps = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.DOTALL):
        first, _, script = block.partition("\n")
        if first.startswith("# on: "):
            steps.append((first.removeprefix("# on: ").split(" (")[0], script))
    return steps


def _bash(script: str, cwd: Path, variables: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env={**env(), **variables},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _finished(process: subprocess.Popen, log: Path, role: str, timeout: float = 900) -> str:
    process.wait(timeout)
    output = log.read_text()
    assert process.returncode == 0, f"docs/team.md, the {role} block failed ({process.returncode}):\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    steps = doc_steps()
    assert [role for role, _ in steps] == ["tracking host", "maintainer", "machine A", "machine B", "colleague"]
    scripts = dict(steps)
    s3 = start_s3(root / "s3", BUCKET)
    postgres = start_postgres("mlflow")
    port = free_port()
    variables = {**S3_CREDENTIALS, "BUCKET": BUCKET, "S3_ENDPOINT": s3.endpoint, "PG_URI": postgres.uri("mlflow"),
                 "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "TRACKING_URI": f"http://127.0.0.1:{port}",
                 "GIT_REMOTE": str(root / "origin.git")}
    outputs: dict[str, str] = {}
    (root / "tracking").mkdir()
    server = _bash(scripts["tracking host"], root / "tracking", variables, root / "tracking.log")
    try:
        wait_for(lambda: answers(f"{variables['TRACKING_URI']}/health"), 180, "the tracking server", server)

        maintainer = copy_repo(root / "maintainer", TINY)
        run(["dvc", "repro"], maintainer, extra_env={"MLFLOW_TRACKING_URI": variables["TRACKING_URI"]})
        branch = run(["git", "branch", "--show-current"], maintainer).stdout.strip()
        run(["git", "init", "-q", "--bare", f"--initial-branch={branch}", variables["GIT_REMOTE"]], root)
        run(["git", "remote", "add", "origin", variables["GIT_REMOTE"]], maintainer)
        outputs["maintainer"] = _finished(_bash(scripts["maintainer"], maintainer, variables,
                                                root / "maintainer.log"), root / "maintainer.log", "maintainer")

        machines = {}
        for name, role in EXPERIMENTS.items():
            (root / name).mkdir()
            machines[role] = _bash(scripts[role], root / name, variables, root / f"{name}.log")
        for name, role in EXPERIMENTS.items():
            outputs[role] = _finished(machines[role], root / f"{name}.log", role)

        (root / "colleague").mkdir()
        outputs["colleague"] = _finished(_bash(scripts["colleague"], root / "colleague", variables,
                                               root / "colleague.log"), root / "colleague.log", "colleague")
        yield {"root": root, "s3": s3, "postgres": postgres, "variables": variables, "outputs": outputs,
               "maintainer": maintainer, "server": server}
    finally:
        stop(server)
        postgres.stop()
        stop(s3.process)


def _clone(team, name: str) -> Path:
    return team["root"] / name / "ptdefense"


def test_the_s3_remote_holds_the_cache_and_clones_pull_instead_of_training(team):
    assert "Cache and remote 'team' are in sync" in team["outputs"]["maintainer"]
    assert team["s3"].keys(BUCKET, "dvc/files/md5/")  # DVC 3's layout in the bucket
    machine_a, machine_b = team["outputs"]["machine A"], team["outputs"]["machine B"]
    for pulled in ("poison-data", "train-backdoored"):  # pulled from the bucket, not trained again
        assert f"Running stage '{pulled}'" not in machine_a + machine_b
    assert "Running stage 'partial-train'" in machine_a  # freeze_layers changed there
    assert "Running stage 'partial-train'" not in machine_b and "Running stage 'isolate'" in machine_b
    status = run(["dvc", "status", "--cloud"], _clone(team, "colleague"), extra_env=S3_CREDENTIALS).stdout
    assert "Cache and remote 'team' are in sync" in status


def test_the_colleague_pulls_both_experiments_and_their_outputs(team):
    shown = team["outputs"]["colleague"]
    assert "freeze2" in shown and "ratio10" in shown
    assert "Running stage" not in shown  # `dvc exp apply` checked the outputs out; nothing trained
    colleague, machine_a = _clone(team, "colleague"), _clone(team, "freeze2")
    params = run(["dvc", "params", "diff", "HEAD", "--json"], colleague).stdout
    changed = json.loads(params)["params.yaml"]["freeze_layers"]
    assert (changed["old"], changed["new"]) == ("auto", 2)
    for output in ("models/partial/model.safetensors", "data/isolation/isolated.npz", "models/defended/model.safetensors"):
        assert (colleague / output).read_bytes() == (machine_a / output).read_bytes(), output
    experiments = json.loads(run(["dvc", "exp", "show", "--json"], colleague).stdout)
    names = {exp.get("name") for baseline in experiments for exp in baseline.get("experiments") or []}
    assert names >= set(EXPERIMENTS)


_READ_BACK = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("ptdefense")
out = {}
for name in sys.argv[3:]:
    runs = client.search_runs([experiment.experiment_id], f"tags.`dvc.exp_name` = '{name}'")
    stages = {run.data.tags.get("ptdefense.stage"): run for run in runs}
    partial = stages["partial-train"].info.run_id if "partial-train" in stages else None
    out[name] = {"stages": sorted(filter(None, stages)), "status": sorted({run.info.status for run in runs}),
                 "pipelines": sorted({run.data.tags.get("ptdefense.pipeline") for run in runs}),
                 "downloaded": partial and client.download_artifacts(partial, "partial/model.safetensors",
                                                                     f"{sys.argv[2]}/{name}")}
print(json.dumps(out))
"""


def test_the_tracking_server_keeps_both_pipelines_in_postgres_and_artifacts_in_s3(team, tmp_path):
    uri = team["variables"]["TRACKING_URI"]
    read = run([sys.executable, "-c", _READ_BACK, uri, str(tmp_path), *EXPERIMENTS], team["root"])
    runs = json.loads(read.stdout.strip().splitlines()[-1])
    assert set(runs["freeze2"]["stages"]) >= {"partial-train", "isolate", "finetune", "evaluate"}
    assert "partial-train" not in runs["ratio10"]["stages"] and {"isolate", "evaluate"} <= set(runs["ratio10"]["stages"])
    for name in EXPERIMENTS:
        assert runs[name]["status"] == ["FINISHED"] and runs[name]["pipelines"] == [name]
    # The model artifact, stored in the bucket by the server, is the DVC output byte for byte.
    machine_a = _clone(team, "freeze2")
    assert Path(runs["freeze2"]["downloaded"]).read_bytes() == \
        (machine_a / "models/partial/model.safetensors").read_bytes()
    assert any(key.endswith("partial/model.safetensors") for key in team["s3"].keys(BUCKET, "mlflow/"))
    # The runs themselves are rows of PostgreSQL, each pipeline's parent run named after its experiment.
    parents = team["postgres"].query("mlflow", "select r.name from runs r join tags t on t.run_uuid = r.run_uuid "
                                               "where t.key = 'ptdefense.role' and t.value = 'pipeline'")
    assert {f"pipeline {name}" for name in EXPERIMENTS} <= {name for (name,) in parents}


def test_a_down_s3_server_fails_remote_commands_and_leaves_the_workspace_alone(team):
    """Last in the module: it stops the S3 server."""
    colleague = _clone(team, "colleague")
    before = (colleague / "models/partial/model.safetensors").read_bytes()
    stop(team["s3"].process)
    result = run(["dvc", "status", "--cloud"], colleague, check=False, extra_env=S3_CREDENTIALS)
    assert result.returncode != 0
    assert "Could not connect to the endpoint URL" in result.stderr, result.stderr
    assert team["variables"]["S3_ENDPOINT"] in result.stderr, result.stderr
    assert (colleague / "models/partial/model.safetensors").read_bytes() == before
    assert "Data and pipelines are up to date" in run(["dvc", "status"], colleague).stdout
