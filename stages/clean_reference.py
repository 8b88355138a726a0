"""DVC stage `clean-reference`: the victim's model and budget, trained on the truly clean samples only.

It bounds what a defense can reach (clean accuracy from above, attack success rate from below). It
reads the true poison indices, so it is evaluation-only knowledge, never a defense.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402

SKIPPED = ("no training sample is known to be poisoned (attack.name none, and data.poison_indices unset or "
           "listing no training sample), so it would train on exactly the data of no defense")


def clean_reference(params: Params) -> None:
    import torch

    from ptdefense.artifacts import write_json
    from ptdefense.data.dataset import ImageSet, dataset_info, load_npz
    from ptdefense.models.io import save_model, save_skipped
    from ptdefense.paths import CLEAN_REFERENCE_MODEL, TRAIN_SET, TRUTH, stage_metrics
    from ptdefense.stage import finish, log_inputs, logged_params, model_spec, setup
    from ptdefense.tracking import StageRun
    from ptdefense.victim import train_victim

    device = setup(params)
    train = ImageSet.load(TRAIN_SET)
    truth = load_npz(TRUTH, "poison-data", ("poison_indices", "cross_indices"))
    # WaNet's noise samples are the attacker's work too.
    touched = torch.from_numpy(truth["poison_indices"]).long(), torch.from_numpy(truth["cross_indices"]).long()
    untouched, _ = train.split(torch.cat(touched))
    spec = model_spec(params, train.image_shape, dataset_info(TRAIN_SET)["num_classes"])
    with StageRun("clean-reference", params, logged_params(params, "model", "train")) as run:
        if len(untouched) == len(train):  # a scan with no (or an empty) list of known poison: nothing to remove
            save_skipped(CLEAN_REFERENCE_MODEL, SKIPPED)
            write_json(stage_metrics("clean-reference"), {"skipped": SKIPPED, "wall_seconds": 0.0, "sample_epochs": 0})
            print(f"clean reference skipped: {SKIPPED}", file=sys.stderr)
            return
        log_inputs(run, train, tests=True)
        model, final, unlogged = train_victim(params, spec, untouched, device, run, "clean reference")
        save_model(model, CLEAN_REFERENCE_MODEL, {**spec, "freeze_layers": 0, "stage": "clean-reference"})
        final["clean_train_count"] = len(untouched)
        finish(run, stage_metrics("clean-reference"), final, {**unlogged, "clean_train_count": len(untouched)},
               [CLEAN_REFERENCE_MODEL])
        run.log_model(model, train.images[:4])


if __name__ == "__main__":
    run_stage(clean_reference)
