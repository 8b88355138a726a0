"""DVC stage `train-backdoored`: the victim's model, trained on the poisoned set as it is (no defense)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def train_backdoored(params: Params) -> None:
    from ptdefense.data.dataset import ImageSet, dataset_info
    from ptdefense.models.io import save_model
    from ptdefense.paths import BACKDOORED_MODEL, TRAIN_SET, stage_metrics
    from ptdefense.stage import finish, log_inputs, logged_params, model_spec, setup
    from ptdefense.tracking import StageRun
    from ptdefense.victim import train_victim

    device = setup(params)
    train = ImageSet.load(TRAIN_SET)
    spec = model_spec(params, train.image_shape, dataset_info(TRAIN_SET)["num_classes"])
    with StageRun("train-backdoored", params, logged_params(params, "model", "train")) as run:
        log_inputs(run, train, tests=True)
        model, final, unlogged = train_victim(params, spec, train, device, run, "backdoored")
        save_model(model, BACKDOORED_MODEL, {**spec, "freeze_layers": 0, "stage": "train-backdoored"})
        finish(run, stage_metrics("train-backdoored"), final, unlogged, [BACKDOORED_MODEL])
        run.log_model(model, train.images[:4])


if __name__ == "__main__":
    run_stage(train_backdoored)
