"""DVC stage `train-backdoored`: the victim's model, trained on the poisoned set as it is (no defense)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def train_backdoored(params: Params) -> None:
    import time

    import torch

    from ptdefense.data.dataset import ImageSet, dataset_info
    from ptdefense.models.io import save_model
    from ptdefense.models.registry import build_from_spec
    from ptdefense.paths import BACKDOORED_MODEL, TRAIN_SET, stage_metrics
    from ptdefense.scoring import test_set_scorer
    from ptdefense.stage import epoch_logger, finish, logged_params, model_spec, not_per_epoch, setup
    from ptdefense.tracking import StageRun
    from ptdefense.training import FitConfig, fit

    device = setup(params)
    train = ImageSet.load(TRAIN_SET)
    spec = model_spec(params, train.image_shape, dataset_info(TRAIN_SET)["num_classes"])
    with StageRun("train-backdoored", params, logged_params(params, "model", "train")) as run:
        torch.manual_seed(params.seed)
        model = build_from_spec(spec)
        config = FitConfig(**params.train.model_dump())
        scores = test_set_scorer(model, device)
        started = time.perf_counter()
        history = fit(model, train, config, device, params.seed, on_epoch_end=epoch_logger(run, "", scores),
                      description="backdoored")
        save_model(model, BACKDOORED_MODEL, {**spec, "freeze_layers": 0, "stage": "train-backdoored"})
        final = {**history[-1], **scores(), "wall_seconds": time.perf_counter() - started,
                 "sample_epochs": config.epochs * len(train)}
        finish(run, stage_metrics("train-backdoored"), final, not_per_epoch(final, history, evaluated=True),
               [BACKDOORED_MODEL])


if __name__ == "__main__":
    run_stage(train_backdoored)
