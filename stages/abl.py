"""DVC stage `abl`: the ABL baseline (Anti-Backdoor Learning, Li et al., 2021) on the same poisoned
data and model as PT: isolation under a held loss, retraining on the rest, unlearning the isolated."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def abl(params: Params) -> None:
    import time

    import numpy as np
    import torch

    from ptdefense.artifacts import write_npz
    from ptdefense.data.dataset import ImageSet, dataset_info
    from ptdefense.defenses.abl import run_abl
    from ptdefense.models.io import save_model
    from ptdefense.models.registry import build_from_spec
    from ptdefense.paths import ABL_ISOLATION, ABL_MODEL, TRAIN_SET, stage_metrics
    from ptdefense.scoring import test_set_scorer
    from ptdefense.stage import epoch_logger, finish, log_inputs, logged_params, model_spec, setup
    from ptdefense.tracking import StageRun

    device = setup(params)
    train = ImageSet.load(TRAIN_SET)
    spec = model_spec(params, train.image_shape, dataset_info(TRAIN_SET)["num_classes"])
    with StageRun("abl", params, logged_params(params, "model", "abl")) as run:
        log_inputs(run, train, tests=True)
        torch.manual_seed(params.seed + 4)
        model = build_from_spec(spec)
        scores = test_set_scorer(model, device)
        epochs_done = [0]  # one MLflow step axis across ABL's three phases

        def phase_logger(phase: str):
            log = epoch_logger(run, f"{phase}/", scores)

            def on_epoch_end(epoch: int, stats: dict) -> None:
                epochs_done[0] += 1
                log(epochs_done[0] - 1, stats)

            return on_epoch_end

        started = time.perf_counter()
        result = run_abl(model, train, params.abl, device, params.seed + 4, on_epoch_end=phase_logger)
        save_model(model, ABL_MODEL, {**spec, "freeze_layers": 0, "stage": "abl"})
        write_npz(ABL_ISOLATION, isolated_indices=result.isolated.numpy().astype(np.int64),
                  isolation_losses=result.isolation_losses.numpy().astype(np.float32))
        final = {"isolated_count": int(result.isolated.numel()), "wall_seconds": time.perf_counter() - started,
                 "sample_epochs": result.sample_epochs, **scores()}
        final.update({f"{phase}_train_loss": history[-1]["train_loss"]
                      for phase, history in result.history.items() if history})
        finish(run, stage_metrics("abl"), final, artifacts=[ABL_MODEL])
        run.log_model(model, train.images[:4])  # after the timing: logging is not the defense's compute
        asr = final.get("attack_success_rate")
        print(f"ABL: isolated {final['isolated_count']} of {len(train)}, clean accuracy {final['clean_accuracy']:.4f}"
              + ("" if asr is None else f", attack success rate {asr:.4f}"), file=sys.stderr)


if __name__ == "__main__":
    run_stage(abl)
