"""End to end: what the tiny pipeline leaves in MLflow beyond metrics. The experiment opens on
model training, the parent run spans the pipeline, the datasets are inputs with DVC's digest, and
the defended model, registered and aliased, loads back with `mlflow.pytorch.load_model` and scores
the clean test set as `evaluate` did.

MLflow is queried in a child process (see test_e2e_dvc._mlflow_runs for why)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from dvc_workspace import run

pytestmark = pytest.mark.e2e

_QUERY = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("ptdefense")
runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
out = {"experiment_tags": experiment.tags, "runs": []}
for r in runs:
    out["runs"].append({"id": r.info.run_id, "status": r.info.status, "start": r.info.start_time,
                        "end": r.info.end_time, "tags": r.data.tags, "metrics": r.data.metrics,
                        "inputs": [{"name": d.dataset.name, "digest": d.dataset.digest,
                                    "source": json.loads(d.dataset.source).get("uri") or d.dataset.source,
                                    "context": {t.key: t.value for t in d.tags}.get("mlflow.data.context")}
                                   for d in (r.inputs.dataset_inputs if r.inputs else [])],
                        "models": [m.model_id for m in (r.outputs.model_outputs if r.outputs else [])]})
print(json.dumps(out))
"""

_SCORE = """
import json, sys
import numpy as np, torch, mlflow, mlflow.pytorch
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
client = MlflowClient(sys.argv[1])
holder = client.get_model_version_by_alias(sys.argv[3], "best-der")
versions = client.search_model_versions(f"name = '{sys.argv[3]}'")
model = mlflow.pytorch.load_model(f"models:/{sys.argv[3]}@best-der")
# The clean test set that version's own run read: its dataset input's digest is DVC's md5, so the
# file is in DVC's cache (the workspace's copy may belong to another experiment, or be gone).
digest = {d.dataset.name: d.dataset.digest for d in client.get_run(holder.run_id).inputs.dataset_inputs}["test_clean"]
arrays = np.load(f"{sys.argv[2]}/.dvc/cache/files/md5/{digest[:2]}/{digest[2:]}")
with torch.no_grad():
    predictions = model(torch.from_numpy(arrays["images"])).argmax(1).numpy()
print(json.dumps({"correct": int((predictions == arrays["labels"]).sum()), "total": len(predictions),
                  "holder": holder.version, "holder_tags": holder.tags,
                  "ders": {v.version: v.tags.get("pt.defense_effectiveness_rating") for v in versions}}))
"""


def _query(workspace: Path, script: str, *args: str) -> dict:
    result = run([sys.executable, "-c", script, f"sqlite:///{workspace / 'mlflow.db'}", *args], workspace)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def store(tiny_workspace, tiny_reproduced) -> dict:
    return _query(tiny_workspace, _QUERY)


def test_the_experiment_opens_on_model_training(store):
    assert store["experiment_tags"].get("mlflow.experimentKind") == "custom_model_development"


def test_the_parent_run_spans_its_stages_and_is_closed_by_evaluate(store):
    stages = [r for r in store["runs"] if r["tags"].get("ptdefense.role") == "stage"]
    parents = {r["id"]: r for r in store["runs"] if r["tags"].get("ptdefense.role") == "pipeline"}
    finished = [p for p in parents.values()
                if any(s["tags"]["mlflow.parentRunId"] == p["id"] and s["tags"]["ptdefense.stage"] == "evaluate"
                       for s in stages)]
    assert finished, "no pipeline ran evaluate"
    for parent in finished:
        children = [s for s in stages if s["tags"]["mlflow.parentRunId"] == parent["id"]]
        assert parent["status"] == "FINISHED"
        assert parent["start"] <= min(child["start"] for child in children)
        assert parent["end"] >= max(child["end"] for child in children)
        # The whole pipeline, not the few milliseconds of its creation.
        assert parent["end"] - parent["start"] >= max(child["end"] - child["start"] for child in children)


def test_datasets_are_inputs_with_dvc_digests(store, tiny_workspace):
    lock = yaml.safe_load((tiny_workspace / "dvc.lock").read_text())
    md5 = {out["path"]: out["md5"] for out in lock["stages"]["poison-data"]["outs"]}
    by_stage: dict[str, list] = {}
    for r in store["runs"]:
        if r["tags"].get("ptdefense.role") == "stage":
            by_stage.setdefault(r["tags"]["ptdefense.stage"], []).append(r)
    for stage in ("train-backdoored", "partial-train", "isolate", "finetune", "abl", "evaluate"):
        inputs = [i for r in by_stage[stage] for i in r["inputs"]]
        train = [i for i in inputs if i["name"] == "train"]
        assert train and all(i["context"] == "training" and i["source"].endswith("data/poisoned/train.npz")
                             for i in train), stage
        # One of the stage's runs made the outputs in the workspace now: its digest is dvc.lock's.
        assert md5["data/poisoned/train.npz"] in {i["digest"] for i in train}, stage
    tests = {i["name"]: i for r in by_stage["evaluate"] for i in r["inputs"] if i["context"] == "evaluation"}
    assert set(tests) == {"test_clean", "test_triggered"}
    assert md5["data/poisoned/test_clean.npz"] in {i["digest"] for r in by_stage["evaluate"] for i in r["inputs"]}


def test_every_trained_model_is_a_logged_mlflow_model(store):
    for r in store["runs"]:
        stage = r["tags"].get("ptdefense.stage")
        trained = "wall_seconds" in r.get("metrics", {}) or stage != "clean-reference"  # it may skip itself
        if stage in ("train-backdoored", "finetune", "abl", "clean-reference") and r["status"] == "FINISHED" \
                and trained:
            assert len(r["models"]) == 1, stage


def test_the_registered_defended_model_loads_back_and_scores_as_evaluate_did(tiny_workspace, tiny_reproduced):
    # Registered as <mlflow.registered_model>-<data.name>-<model.name>.
    scored = _query(tiny_workspace, _SCORE, str(tiny_workspace), "ptdefense-defended-fashion_mnist-resnet_small")
    tags = scored["holder_tags"]
    # evaluate's figure for this version's pipeline, on the same clean test set (every attack keeps it).
    expected = float(tags["pt.clean_accuracy"]) * scored["total"]
    assert abs(scored["correct"] - expected) <= 1, (scored["correct"], expected)  # ≤ 1 image: CPU layouts differ
    ders = {version: float(der) for version, der in scored["ders"].items() if der not in (None, "None")}
    assert ders and ders[str(scored["holder"])] == max(ders.values()), "best-der must sit on the best DER"
