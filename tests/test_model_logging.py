"""The registry's best-DER alias and the pixel-input wrapper of logged models.

The alias logic runs against a real sqlite-backed MLflow registry, in a child process (MLflow's
native threads stay out of the test process, as in test_e2e_dvc)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from ptdefense.model_logging import PixelInputModel
from ptdefense.training import to_input

REPO = Path(__file__).resolve().parents[1]

_ALIAS_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
from mlflow.tracking import MlflowClient
from ptdefense.model_logging import BEST_ALIAS, tag_registered_version
client = MlflowClient(sys.argv[1])
experiment = client.create_experiment("alias")
client.create_registered_model("defended")
history = []
for der in (0.5, 0.3, None, 0.7, 0.7):
    run = client.create_run(experiment).info.run_id
    client.create_model_version("defended", f"runs:/{run}/model", run_id=run)
    metrics = {"pt.clean_accuracy": 0.9, "pt.defense_effectiveness_rating": der, "abl.clean_accuracy": 0.8}
    result = tag_registered_version(client, "defended", run, metrics, "pipeline-x")
    holder = client.get_model_version_by_alias("defended", BEST_ALIAS)
    history.append({"result": result, "holder": str(holder.version), "tags": holder.tags})
other = client.create_run(experiment).info.run_id
history.append({"unregistered": tag_registered_version(client, "defended", other, {}, "p")})
print(json.dumps(history))
"""


def test_best_der_alias_follows_the_best_rating(tmp_path):
    result = subprocess.run([sys.executable, "-c", _ALIAS_SCRIPT, f"sqlite:///{tmp_path / 'store.db'}",
                             str(REPO / "src")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads(result.stdout.strip().splitlines()[-1])
    assert [step["holder"] for step in history[:5]] == ["1", "1", "1", "4", "5"]  # worse and unrated: it stays
    assert [step["result"]["alias_moved"] for step in history[:5]] == [True, False, False, True, True]  # ties: newest
    assert history[0]["tags"]["pt.defense_effectiveness_rating"] == "0.5"
    assert history[0]["tags"]["ptdefense.pipeline"] == "pipeline-x"
    assert "abl.clean_accuracy" not in history[0]["tags"]  # only PT's and the baseline's figures
    assert history[5]["unregistered"] is None


def test_the_logged_wrapper_sees_what_the_stages_feed_the_network():
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)).eval()
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = network(to_input(images, torch.device("cpu")))
        served = PixelInputModel(network)(images)
    torch.testing.assert_close(served, expected)
