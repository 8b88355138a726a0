"""DVC stage `evaluate`: every method side by side (no defense, ABL, PT and the clean reference),
scored on the test sets and against the true poison indices. Writes metrics/evaluate.json, the
comparison report, the plots, and the comparison metrics onto the pipeline's MLflow parent run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402

TRAINING_STAGES = ("train-backdoored", "partial-train", "isolate", "finetune", "abl", "clean-reference")


def evaluate(params: Params) -> None:
    import torch

    from ptdefense import paths
    from ptdefense.artifacts import read_json, write_json, write_text
    from ptdefense.data.dataset import ImageSet, dataset_info, load_npz
    from ptdefense.evaluation import (comparison_markdown, comparison_table, comparison_title, compute_spent,
                                      isolation_scores, write_figures)
    from ptdefense.models.io import load_model, skipped_reason
    from ptdefense.scoring import TestSets, score_model
    from ptdefense.stage import log_inputs, logged_params, setup
    from ptdefense.tracking import StageRun, flatten
    from ptdefense.training import per_sample_loss

    device = setup(params)
    with StageRun("evaluate", params, logged_params(params, "attack")) as run:
        train, tests = ImageSet.load(paths.TRAIN_SET), TestSets.load()
        log_inputs(run, train, tests=True)
        truth_arrays = load_npz(paths.TRUTH, "poison-data", ("poison_indices",))
        truth = torch.from_numpy(truth_arrays["poison_indices"]).long()
        truth_known = bool(truth_arrays.get("known", True))  # False: a scan without data.poison_indices
        pt = load_npz(paths.ISOLATED, "isolate", ("isolated_indices", "partial_losses", "suspicion_scores"))
        abl = load_npz(paths.ABL_ISOLATION, "abl", ("isolated_indices", "isolation_losses"))
        sources = {"no_defense": (paths.BACKDOORED_MODEL, "train-backdoored"), "abl": (paths.ABL_MODEL, "abl"),
                   "pt": (paths.DEFENDED_MODEL, "finetune"),
                   "clean_reference": (paths.CLEAN_REFERENCE_MODEL, "clean-reference")}
        models = {method: load_model(directory, producer)[0] for method, (directory, producer) in sources.items()
                  if skipped_reason(directory) is None}
        spent = {stage: read_json(paths.stage_metrics(stage), stage) for stage in TRAINING_STAGES}

        scores = {method: score_model(model, tests, device) for method, model in models.items()}
        num_classes = dataset_info(paths.TRAIN_SET)["num_classes"]
        isolation = {method: isolation_scores(torch.from_numpy(arrays["isolated_indices"]).long(), truth,
                                              truth_known, train.labels, num_classes)
                     for method, arrays in (("pt", pt), ("abl", abl))}
        compute = {"no_defense": compute_spent(spent["train-backdoored"]), "abl": compute_spent(spent["abl"]),
                   "pt": compute_spent(spent["partial-train"], spent["isolate"], spent["finetune"]),
                   "clean_reference": compute_spent(spent["clean-reference"])}
        table = comparison_table(scores, isolation, compute)
        metrics = {**table, "poison_count": int(truth.numel()) if truth_known else None}
        metrics_path = paths.METRICS_DIR / "evaluate.json"
        write_json(metrics_path, metrics)

        is_poison = torch.zeros(len(train), dtype=torch.bool)
        is_poison[truth] = True
        losses = {"partial": torch.from_numpy(pt["partial_losses"]),
                  "full": per_sample_loss(models["no_defense"], train, device),
                  "abl": torch.from_numpy(abl["isolation_losses"])}
        flagged = [int(label) for label in spent["isolate"].get("suspicious_classes") or []]
        # With no known poison (or an empty list) no ranking can find any: the sweep is undefined.
        depth_used = spent["partial-train"].get("freeze_layers_used")  # what `auto` chose
        figures = write_figures(params, train.labels, is_poison, truth_known and truth.numel() > 0, losses,
                                torch.from_numpy(pt["suspicion_scores"]), flagged, table, paths.PLOTS_DIR, depth_used)
        report_text = comparison_markdown(table, comparison_title(params, depth_used), metrics["poison_count"])
        report = paths.REPORTS_DIR / "evaluate.md"
        write_text(report, report_text)
        print(report_text)
        run.log_metrics(flatten(metrics))
        run.log_pipeline_metrics(flatten(metrics))
        for path in [metrics_path, report, *figures]:
            run.log_artifact(path)
        run.tag_registered_model("finetune", flatten(metrics))


if __name__ == "__main__":
    run_stage(evaluate)
