"""presets/: BackdoorBench's CIFAR-10 protocol as a DVC experiment (presets/run.py), its keys
checked against the params schema, and its code path run end to end on CPU at a tiny scale."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from dvc_workspace import QUICK, REPO, copy_repo, run

spec = importlib.util.spec_from_file_location("preset_runner", REPO / "presets" / "run.py")
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)


def assignments(name: str, overrides: list[str] | None = None) -> dict[str, str]:
    args = runner.set_args(name, overrides or [])
    return dict(arg.split("=", 1) for arg in args[1::2])


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO / "presets").glob("*.yaml")))
def test_every_preset_fits_the_params_schema(name):
    assert assignments(name)


def test_the_backdoorbench_preset_is_its_published_recipe():
    keys = assignments("backdoorbench-cifar10")
    assert (keys["data.name"], keys["model.name"], keys["attack.name"], keys["attack.poison_rate"]) == \
        ("cifar10", "preact_resnet18", "badnets", "0.1")
    for section in ("train", "finetune"):
        assert [keys[f"{section}.{key}"] for key in ("lr", "momentum", "weight_decay", "schedule", "augment",
                                                     "batch_size", "epochs")] == \
            ["0.01", "0.9", "0.0005", "cosine", "crop_flip", "128", "100"]


def test_overrides_come_last_and_win():
    args = runner.set_args("backdoorbench-cifar10", ["train.epochs=20"])
    assert args[-2:] == ["-S", "train.epochs=20"]


def test_a_bad_override_fails_before_dvc_with_the_key_named(capsys):
    with pytest.raises(SystemExit, match="train.schedule"):
        runner.set_args("backdoorbench-cifar10", ["train.schedule=linear"])
    with pytest.raises(SystemExit, match="known: backdoorbench-cifar10"):
        runner.set_args("no-such-preset", [])


def _tiny_colour_set(path, seed: int = 0) -> None:
    """32×32×3 images, ten classes told apart by colour and stripes: CIFAR-10's shape, at toy scale."""
    generator = np.random.default_rng(seed)

    def split(count):
        labels = np.arange(count) % 10
        images = generator.integers(0, 60, (count, 32, 32, 3))
        for image, label in zip(images, labels):
            image[:, :, label % 3] += 40 + 15 * label  # a colour per class
            image[:: 2 + label % 4] += 30              # and a stripe spacing
        return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = split(400)
    x_test, y_test = split(100)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@pytest.mark.e2e
def test_the_preset_runs_as_a_dvc_experiment_on_cpu(tmp_path):
    """The preset's whole code path (preact_resnet18, cosine, crop and flip in every recipe model) as
    `presets/run.py … --name`, shrunk by -S overrides: 400 images, width 8, one epoch each."""
    workspace = copy_repo(tmp_path / "repo", QUICK)
    _tiny_colour_set(workspace / "data" / "raw" / "tiny32.npz")
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-qm", "tiny 32x32 set"], workspace)
    shrink = ["data.name=npz", "data.root=data/raw/tiny32.npz", "model.width=8", "train.epochs=1",
              "finetune.epochs=1", "abl.isolation_epochs=1", "abl.retrain_epochs=1", "abl.unlearn_epochs=1",
              "partial.epochs=1", "isolation.quarantine_epochs=1", "isolation.quarantine_rounds=1"]
    shrink += [f"{section}.precision=fp32" for section in ("train", "finetune", "abl", "partial", "isolation")]
    result = run([sys.executable, "presets/run.py", "backdoorbench-cifar10", "--name", "bb-tiny",
                  *(item for override in shrink for item in ("-S", override))], workspace)
    assert "Running stage 'evaluate'" in result.stdout
    shown = json.loads(run(["dvc", "exp", "show", "--json"], workspace).stdout)
    experiments = {exp["name"]: exp["revs"][0]["data"] for baseline in shown for exp in baseline.get("experiments") or []}
    params = experiments["bb-tiny"]["params"]["params.yaml"]["data"]
    assert params["model"]["name"] == "preact_resnet18"
    assert (params["train"]["schedule"], params["train"]["augment"], params["abl"]["augment"]) == \
        ("cosine", "crop_flip", "crop_flip")
    evaluated = json.loads((workspace / "metrics" / "evaluate.json").read_text())
    assert 0.0 <= evaluated["pt"]["clean_accuracy"] <= 1.0
    model = json.loads((workspace / "models" / "defended" / "model.json").read_text())
    assert model["architecture"] == "preact_resnet18"
