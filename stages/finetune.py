"""DVC stage `finetune`: PT's last step. A clean model is trained on the samples that isolate kept,
while the isolated ones it is sure of are pushed away from their labels (`finetune.unlearn`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def finetune(params: Params) -> None:
    import time

    import torch

    from ptdefense.data.dataset import ImageSet, dataset_info, load_npz
    from ptdefense.defenses.pt import finetune_model, unlearn_indices
    from ptdefense.models.io import load_model, save_model
    from ptdefense.models.registry import build_from_spec
    from ptdefense.paths import BACKDOORED_MODEL, DEFENDED_MODEL, ISOLATED, PARTIAL_MODEL, TRAIN_SET, stage_metrics
    from ptdefense.scoring import test_set_scorer
    from ptdefense.stage import epoch_logger, finish, log_inputs, logged_params, model_spec, not_per_epoch, setup
    from ptdefense.tracking import StageRun
    from ptdefense.training import FitConfig

    device = setup(params)
    train = ImageSet.load(TRAIN_SET)
    isolation = load_npz(ISOLATED, "isolate", ("isolated_indices", "confident_indices"))
    retained, suspects = train.split(torch.from_numpy(isolation["isolated_indices"]).long())
    chosen = unlearn_indices(params.finetune.unlearn, isolation["isolated_indices"], isolation["confident_indices"])
    unlearned = None if chosen is None else train.subset(chosen)
    spec = model_spec(params, train.image_shape, dataset_info(TRAIN_SET)["num_classes"])
    with StageRun("finetune", params, logged_params(params, "finetune")) as run:
        log_inputs(run, train, tests=True)
        torch.manual_seed(params.seed + 2)
        if params.finetune.init == "scratch":
            model = build_from_spec(spec)
        elif params.finetune.init == "backdoored":
            model, _ = load_model(BACKDOORED_MODEL, "train-backdoored")
        else:
            model, _ = load_model(PARTIAL_MODEL, "partial-train")
        config = FitConfig(**params.finetune.model_dump(exclude={"init", "unlearn", "unlearn_weight"}))
        started = time.perf_counter()
        history = finetune_model(model, retained, unlearned, config, device,
                                 params.seed + 2, params.finetune.unlearn_weight,
                                 on_epoch_end=epoch_logger(run, "", test_set_scorer(model, device)))
        save_model(model, DEFENDED_MODEL,
                   {**spec, "freeze_layers": 0, "stage": "finetune", "init": params.finetune.init})
        final = {**history[-1], "retained_count": len(retained), "isolated_count": len(suspects),
                 "unlearned_count": len(unlearned) if unlearned is not None else 0,
                 "wall_seconds": time.perf_counter() - started, "sample_epochs": len(history) * len(retained)}
        finish(run, stage_metrics("finetune"), final, not_per_epoch(final, history, evaluated=True),
               [DEFENDED_MODEL])
        run.log_model(model, train.images[:4], register=True)  # after the timing: logging is not the defense's compute


if __name__ == "__main__":
    run_stage(finetune)
