"""DVC stage `isolate`: PT's second step. The partly trained model scores every training sample;
labels whose signs of poison stand out are tested with a quarantine class trained on half their
seeds, and the suspicious samples of the labels that pass are isolated. Writes the isolated indices, the per-sample losses and the suspects report."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def isolate(params: Params) -> None:
    import time

    import torch

    from ptdefense.data.dataset import ImageSet, dataset_info
    from ptdefense.defenses.isolation import isolate_samples, write_isolation
    from ptdefense.models.io import load_model
    from ptdefense.paths import (ISOLATED, LOSSES_CSV, PARTIAL_MODEL, SUSPECTS_GRID, SUSPECTS_REPORT, TRAIN_SET,
                                 stage_metrics)
    from ptdefense.scanning import plot_suspects, suspects_rows, write_suspects_report
    from ptdefense.stage import finish, log_inputs, logged_params, setup
    from ptdefense.tracking import StageRun, flatten

    device = setup(params)
    train = ImageSet.load(TRAIN_SET)
    info = dataset_info(TRAIN_SET)  # before any work: a bad train.npz must not leave half the outputs new
    model, spec = load_model(PARTIAL_MODEL, "partial-train")
    logged = {**logged_params(params, "isolation"), "freeze_layers": params.freeze_layers,
              "freeze_layers_used": spec.get("freeze_layers", 0)}
    with StageRun("isolate", params, logged) as run:
        log_inputs(run, train)
        started = time.perf_counter()
        result, losses = isolate_samples(model, train, params.isolation, spec["num_classes"], spec["architecture"],
                                         spec.get("width"), spec.get("freeze_layers", 0), device, params.seed + 3)
        write_isolation(LOSSES_CSV, ISOLATED, train.labels, losses, result)
        suspects = suspects_rows(result.isolated, result.scores, losses, train.labels, info["class_names"],
                                 info["sources"])
        write_suspects_report(SUSPECTS_REPORT, suspects)
        plot_suspects(train.images, suspects, SUSPECTS_GRID)
        isolated_per_class = torch.bincount(train.labels[result.isolated], minlength=info["num_classes"])
        # the quarantine models' sample-epochs (all rounds, scaled epochs included): the stage's compute
        quarantine_sample_epochs = result.details.pop("quarantine_sample_epochs", 0)
        summary = {**result.details, "isolated_count": int(result.isolated.numel()),
                   "confident_count": int(result.isolated.numel() if result.confident is None
                                          else result.confident.numel()),
                   "isolated_per_class": {str(c): int(n) for c, n in enumerate(isolated_per_class.tolist())},
                   "sample_epochs": quarantine_sample_epochs,
                   "isolated_share": result.isolated.numel() / len(train),
                   "wall_seconds": time.perf_counter() - started}
        # flatten: isolated_per_class.<label>, diversity_gap.<label>, … as MLflow metrics
        finish(run, stage_metrics("isolate"), summary, flatten(summary), [LOSSES_CSV, SUSPECTS_REPORT, SUSPECTS_GRID])
        print(f"isolated {summary['isolated_count']} of {len(train)} samples", file=sys.stderr)


if __name__ == "__main__":
    run_stage(isolate)
