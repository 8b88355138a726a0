"""Running a DVC stage: params validation first, then checkpointing, seeding, per-epoch logging,
and the stage's ending (metrics JSON, MLflow metrics and artifacts).

Torch is imported only after params.yaml validates, so that a bad file is reported in half a second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ptdefense.artifacts import ArtifactError, write_json
from ptdefense.data.errors import DatasetError
from ptdefense.params import Params, ParamsError, load_params

if TYPE_CHECKING:
    from ptdefense.tracking import StageRun


def run_stage(stage: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Validate params.yaml, run the stage, and turn known input errors into one clear line."""
    from ptdefense.tracking import TrackingError

    name = stage.__name__.replace("_", "-")
    try:
        params = load_params(params_path)
        from ptdefense.checkpoints import checkpointing  # imports torch: only once the params are valid

        # Every fit in the stage checkpoints per epoch; a rerun after a kill resumes from there.
        with checkpointing(name, params.digest()):
            stage(params)
    except (ParamsError, ArtifactError, DatasetError, TrackingError, OSError) as error:
        # OSError: disk full, permissions; the one line says what and where.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"interrupted: {name} stopped before finishing, so DVC does not record its outputs; the epochs it "
              f"finished are kept in checkpoints/{name}/ and the next run resumes from them", file=sys.stderr)
        raise SystemExit(130) from None


def setup(params: Params):
    """Seed every RNG from params.seed and pick the device."""
    from ptdefense.training import pick_device, seed_everything

    seed_everything(params.seed)
    return pick_device(params.device)


def logged_params(params: Params, *sections: str) -> dict:
    """The stage's own params, as its MLflow run records them."""
    dump = params.model_dump(mode="json")
    return {"seed": params.seed, **{section: dump[section] for section in sections}}


def model_spec(params: Params, image_shape: tuple[int, ...], num_classes: int) -> dict:
    """What a saved model records about itself, so that later stages rebuild it."""
    return {"architecture": params.model.name, "width": params.model.width, "in_channels": image_shape[0],
            "input_shape": list(image_shape), "num_classes": num_classes, "dataset": params.data.name}


def epoch_logger(run: "StageRun", prefix: str = "", evaluate: Callable[[], dict] | None = None):
    """An `on_epoch_end` callback: the epoch's stats (and test scores) to MLflow and one stderr line."""
    def on_epoch_end(epoch: int, stats: dict) -> None:
        scores = {**stats, **(evaluate() if evaluate else {})}
        run.log_metrics({f"{prefix}{key}": value for key, value in scores.items()}, step=epoch + 1)
        shown = ", ".join(f"{key} {value:.4f}" for key, value in scores.items() if key != "epoch_seconds")
        print(f"[{prefix.rstrip('/') or 'train'}] epoch {epoch + 1}: {shown}", file=sys.stderr)

    return on_epoch_end


def not_per_epoch(final: dict, history: list[dict], evaluated: bool = False) -> dict:
    """Final metrics minus those already logged per epoch (MLflow would add a stray step-0 point)."""
    per_epoch = set(history[-1]) | ({"clean_accuracy", "attack_success_rate"} if evaluated else set())
    return {key: value for key, value in final.items() if key not in per_epoch}


def log_inputs(run: "StageRun", train=None, tests: bool = False) -> None:
    """The poisoned training set (when the stage trains on it) and the test sets (when it scores on
    them) as the run's MLflow dataset inputs."""
    if not run.active:
        return
    import torch

    from ptdefense import paths
    from ptdefense.data.dataset import ImageSet, load_npz

    if train is not None:
        run.log_dataset(paths.TRAIN_SET, train.images, train.labels, "training")
    if tests:
        clean = ImageSet.load(paths.TEST_CLEAN)
        run.log_dataset(paths.TEST_CLEAN, clean.images, clean.labels, "evaluation")
        triggered = load_npz(paths.TEST_TRIGGERED, "poison-data", ("images", "labels"))
        if len(triggered["labels"]):
            run.log_dataset(paths.TEST_TRIGGERED, torch.from_numpy(triggered["images"]),
                            torch.from_numpy(triggered["labels"]), "evaluation")


def finish(run: "StageRun", metrics_path: Path, final: dict, logged: dict | None = None,
           artifacts: Iterable[Path] = ()) -> None:
    """Write the stage's metrics JSON, log `logged` (default: all of `final`) and the artifacts to MLflow."""
    write_json(metrics_path, final)
    run.log_metrics(final if logged is None else logged)
    for path in artifacts:
        run.log_artifact(path)
