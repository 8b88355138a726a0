"""What each DVC stage does, as plain functions of the validated params.

The scripts in stages/ only call `run_stage(<function>)`; the logic lives here so that it can be
tested without DVC. Defense stages never read the ground-truth poison indices: only `clean-reference` (a bound, not a
defense) and `evaluate` do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from ptdefense.artifacts import ArtifactError
from ptdefense.params import Params, ParamsError, load_params

# Outputs, relative to the workspace (DVC runs every stage from the repository root).
TRAIN_SET = Path("data/poisoned/train.npz")
TEST_CLEAN = Path("data/poisoned/test_clean.npz")
TEST_TRIGGERED = Path("data/poisoned/test_triggered.npz")
TRUTH = Path("data/truth/poison_indices.npz")  # evaluation only: kept apart so no defense depends on it
BACKDOORED_MODEL = Path("models/backdoored")
PARTIAL_MODEL = Path("models/partial")
DEFENDED_MODEL = Path("models/defended")
ABL_MODEL = Path("models/abl")
ABL_ISOLATION = Path("data/abl/isolation.npz")
CLEAN_REFERENCE_MODEL = Path("models/clean_reference")
LOSSES_CSV = Path("data/isolation/losses.csv")
ISOLATED = Path("data/isolation/isolated.npz")
SUSPECTS_REPORT = Path("reports/suspects.csv")
SUSPECTS_GRID = Path("plots/suspects.png")
SUSPECTS_SHOWN = 40  # images in the suspects grid
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")


def run_stage(stage: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Validate params.yaml, run the stage, and turn known input errors into one clear line."""
    from ptdefense.data.loaders import DatasetError
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


def _setup(params: Params):
    from ptdefense.training import pick_device, seed_everything

    seed_everything(params.seed)
    return pick_device(params.device)


def _stage_params(params: Params, *sections: str) -> dict:
    dump = params.model_dump(mode="json")
    picked = {"seed": params.seed}
    for section in sections:
        picked[section] = dump[section]
    return picked


def _not_per_epoch(final: dict, history: list[dict], evaluated: bool = False) -> dict:
    """Final metrics minus those already logged per epoch (MLflow would add a stray step-0 point)."""
    per_epoch = set(history[-1]) | ({"clean_accuracy", "attack_success_rate"} if evaluated else set())
    return {key: value for key, value in final.items() if key not in per_epoch}


def _epoch_logger(run, prefix: str, evaluate: Callable[[], dict] | None = None):
    def on_epoch_end(epoch: int, stats: dict) -> None:
        extra = evaluate() if evaluate else {}
        run.log_metrics({f"{prefix}{k}": v for k, v in {**stats, **extra}.items()}, step=epoch + 1)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in {**stats, **extra}.items() if k != "epoch_seconds")
        print(f"[{prefix.rstrip('/') or 'train'}] epoch {epoch + 1}: {shown}", file=sys.stderr)

    return on_epoch_end


def _test_evaluator(model, device):
    """Clean accuracy and ASR on the test sets: per-epoch curves in MLflow, and the final metrics."""
    from ptdefense.data.dataset import ImageSet, load_npz
    from ptdefense.metrics import attack_success_rate, clean_accuracy
    from ptdefense.training import predict
    import torch

    clean = ImageSet.load(TEST_CLEAN)
    triggered = load_npz(TEST_TRIGGERED, "poison-data", ("images", "labels", "attack_targets"))
    triggered_images = torch.from_numpy(triggered["images"])
    targets = torch.from_numpy(triggered["attack_targets"])

    last: dict = {}

    def state_version() -> tuple[int, ...]:
        # Every in-place update (an optimiser step, a BatchNorm statistic) bumps a tensor's version.
        return tuple(tensor._version for tensor in (*model.parameters(), *model.buffers()))

    def evaluate() -> dict:
        # The final metrics reuse the last epoch's evaluation when the weights have not moved since
        # (measured: 3.5 s per call on the default test sets, four or twelve calls per stage).
        if last.get("version") != state_version():
            scores = {"clean_accuracy": clean_accuracy(predict(model, clean.images, device), clean.labels)}
            if targets.numel():  # attack.name none: no trigger is known, so there is no attack success rate
                scores["attack_success_rate"] = attack_success_rate(predict(model, triggered_images, device), targets)
            last.update(version=state_version(), scores=scores)
        return dict(last["scores"])

    return evaluate


def dataset_info(path: Path = TRAIN_SET) -> dict:
    """What poison-data stored beside the training images: the class count and names, and each
    sample's source file (image folders, GTSRB), without loading the images themselves."""
    import numpy as np

    from ptdefense.artifacts import require_file

    with np.load(require_file(path, "poison-data"), allow_pickle=False) as archive:
        if "num_classes" not in archive.files:
            raise ArtifactError(f"{path} predates the dataset metadata (num_classes); re-create it with "
                                "`dvc repro poison-data`")
        num_classes = int(archive["num_classes"])
        class_names = [str(name) for name in archive["class_names"]] if "class_names" in archive.files else []
        sources = [str(name) for name in archive["sources"]] if "sources" in archive.files else None
    return {"num_classes": num_classes, "class_names": class_names or [str(c) for c in range(num_classes)],
            "sources": sources}


# ---------------------------------------------------------------------------------------------
def poison_data(params: Params) -> None:
    import numpy as np

    from ptdefense.artifacts import atomic_path, resolve_path, write_json
    from ptdefense.attacks import PoisonedTrainSet, build_attack
    from ptdefense.data import load_dataset
    import torch

    from ptdefense.plots import plot_image_grid, plot_poison_examples
    from ptdefense.scanning import read_poison_list
    from ptdefense.tracking import StageRun

    device = _setup(params)
    with StageRun("poison-data", params, _stage_params(params, "data", "attack")) as run:
        loaded = load_dataset(params.data.name, resolve_path(params.data.root), params.data.download,
                              params.data.train_limit, params.data.test_limit, image_size=params.data.image_size,
                              test_split=params.data.test_split, seed=params.seed)
        train, test, num_classes = loaded.train, loaded.test, loaded.num_classes
        try:
            attack = build_attack(params.attack.name, num_classes, params.attack.poison_rate,
                                  params.attack.target_label, params.seed, params.attack.settings())
        except ValueError as error:  # a target label the dataset does not have
            raise ParamsError(f"attack.target_label: {error} ({params.data.name} at {params.data.root} has "
                              f"{num_classes} classes)") from None
        known_poison, listed_in_test = None, []
        if params.data.poison_indices is not None:
            known_poison, listed_in_test = read_poison_list(resolve_path(params.data.poison_indices), len(train),
                                                            loaded.train_sources, loaded.test_sources)
            if listed_in_test:
                print(f"warning: {len(listed_in_test)} files of data.poison_indices are in the test split (e.g. "
                      f"{listed_in_test[0]}), not in the training set: they are not scored", file=sys.stderr)
        try:
            poisoned = attack.poison(train, device)
        except ValueError as error:  # e.g. more victims asked for than the data has
            raise ParamsError(f"attack {attack.name!r} cannot poison this data: {error}") from None
        if known_poison is not None:
            poisoned = PoisonedTrainSet(poisoned.data, known_poison)
        triggered = attack.triggered_test(test)
        summary_known = attack.name != "none" or known_poison is not None  # a scan may know no poison at all
        metadata = {"num_classes": np.int64(num_classes), "class_names": np.array(loaded.class_names, dtype=str)}
        if loaded.train_sources is not None:
            metadata["sources"] = np.array(loaded.train_sources, dtype=str)
        poisoned.data.save(TRAIN_SET, **metadata)
        test.save(TEST_CLEAN)
        triggered.data.save(TEST_TRIGGERED, attack_targets=triggered.attack_targets.numpy())
        with atomic_path(TRUTH) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, poison_indices=poisoned.poison_indices.numpy(),
                     cross_indices=poisoned.cross_indices.numpy(), known=np.bool_(summary_known))
        summary = {
            "train_size": len(poisoned.data),
            "test_size": len(test),
            "triggered_test_size": len(triggered.data),
            "poison_count": int(poisoned.poison_indices.numel()),
            "poison_share": poisoned.poison_indices.numel() / len(poisoned.data),
            "cross_count": int(poisoned.cross_indices.numel()),
            "clean_label": int(attack.clean_label),
            "num_classes": num_classes,
            "image_shape": list(poisoned.data.image_shape),
            "known_poison": summary_known,
            "known_poison_in_test": len(listed_in_test),
        }
        write_json(METRICS_DIR / "poison.json", summary)
        examples = PLOTS_DIR / "poison_examples.png"
        if attack.name == "none":  # nothing was changed: show the known poison, else the first samples
            shown = (known_poison if known_poison is not None and known_poison.numel() else torch.arange(len(train)))[:12]
            plot_image_grid(train.images[shown], [f"#{int(i)} label {int(train.labels[i])}" for i in shown], examples,
                            "known poisoned samples (data.poison_indices)" if known_poison is not None
                            and known_poison.numel() else "training samples, scanned as they are")
        else:
            plot_poison_examples(train, poisoned, examples, attack.name)
        run.log_metrics({key: value for key, value in summary.items() if key not in ("image_shape", "known_poison")})
        run.log_artifact(examples)
        if attack.name == "none":
            known = f"{summary['poison_count']} known poisoned (data.poison_indices)" if known_poison is not None \
                else "none known poisoned"
            print(f"scanning {summary['train_size']} training samples as they are, {known}", file=sys.stderr)
        else:
            print(f"poisoned {summary['poison_count']} of {summary['train_size']} training samples "
                  f"({attack.name}, target {params.attack.target_label})", file=sys.stderr)


def _dataset_spec(params: Params, train) -> dict:
    return {
        "architecture": params.model.name,
        "width": params.model.width,
        "in_channels": train.image_shape[0],
        "input_shape": list(train.image_shape),
        "num_classes": dataset_info()["num_classes"],
        "dataset": params.data.name,
    }


def train_backdoored(params: Params) -> None:
    from ptdefense.artifacts import write_json
    from ptdefense.data.dataset import ImageSet
    from ptdefense.models import build_model
    from ptdefense.models.io import save_model
    from ptdefense.tracking import StageRun
    from ptdefense.training import FitConfig, fit
    import torch

    device = _setup(params)
    train = ImageSet.load(TRAIN_SET)
    spec = _dataset_spec(params, train)
    with StageRun("train-backdoored", params, _stage_params(params, "model", "train")) as run:
        torch.manual_seed(params.seed)
        model = build_model(spec["architecture"], spec["in_channels"], spec["num_classes"], spec["width"])
        config = FitConfig(**params.train.model_dump())
        evaluator = _test_evaluator(model, device)
        started = time.perf_counter()
        history = fit(model, train, config, device, params.seed, on_epoch_end=_epoch_logger(run, "", evaluator),
                      description="backdoored")
        save_model(model, BACKDOORED_MODEL, {**spec, "freeze_layers": 0, "stage": "train-backdoored"})
        final = {**history[-1], **evaluator(), "wall_seconds": time.perf_counter() - started,
                 "sample_epochs": config.epochs * len(train)}
        write_json(METRICS_DIR / "train_backdoored.json", final)
        run.log_metrics(_not_per_epoch(final, history, evaluated=True))
        run.log_artifact(BACKDOORED_MODEL)


def partial_train(params: Params) -> None:
    from ptdefense.artifacts import write_json
    from ptdefense.data.dataset import ImageSet
    from ptdefense.defenses.pt import build_partial_model
    from ptdefense.models.io import save_model
    from ptdefense.tracking import StageRun
    from ptdefense.training import FitConfig, fit

    device = _setup(params)
    train = ImageSet.load(TRAIN_SET)
    spec = _dataset_spec(params, train)
    stage_params = {**_stage_params(params, "model", "partial"), "freeze_layers": params.freeze_layers}
    with StageRun("partial-train", params, stage_params) as run:
        model = build_partial_model(spec["architecture"], spec["in_channels"], spec["num_classes"], spec["width"],
                                    params.freeze_layers, params.partial.frozen_bn, train.images, device, params.seed)
        frozen = model.block_names[: params.freeze_layers]
        print(f"partial training: frozen blocks {frozen or 'none'}, trained "
              f"{model.block_names[params.freeze_layers:]}", file=sys.stderr)
        config = FitConfig(**params.partial.model_dump(exclude={"frozen_bn"}))
        started = time.perf_counter()
        history = fit(model, train, config, device, params.seed + 1, on_epoch_end=_epoch_logger(run, ""),
                      description="partial")
        save_model(model, PARTIAL_MODEL, {**spec, "freeze_layers": params.freeze_layers, "frozen_blocks": frozen,
                                          "stage": "partial-train"})
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        final = {**history[-1], "wall_seconds": time.perf_counter() - started, "trainable_parameters": trainable,
                 "total_parameters": sum(p.numel() for p in model.parameters()),
                 "sample_epochs": config.epochs * len(train)}
        write_json(METRICS_DIR / "partial_train.json", final)
        run.log_metrics(_not_per_epoch(final, history))
        run.log_artifact(PARTIAL_MODEL)


def isolate(params: Params) -> None:
    from ptdefense.artifacts import write_json
    from ptdefense.data.dataset import ImageSet
    import torch

    from ptdefense.defenses.isolation import isolate_samples, write_isolation
    from ptdefense.models.io import load_model
    from ptdefense.plots import plot_image_grid
    from ptdefense.scanning import suspects_rows, write_suspects_report
    from ptdefense.tracking import StageRun, flatten

    device = _setup(params)
    train = ImageSet.load(TRAIN_SET)
    info = dataset_info()  # before any work: a bad train.npz must not leave half the outputs new
    model, spec = load_model(PARTIAL_MODEL, "partial-train")
    with StageRun("isolate", params, {**_stage_params(params, "isolation"), "freeze_layers": params.freeze_layers}) as run:
        started = time.perf_counter()
        result, losses = isolate_samples(model, train, params.isolation, spec["num_classes"], spec["architecture"],
                                         spec.get("width"), device, params.seed + 3)
        write_isolation(LOSSES_CSV, ISOLATED, train.labels, losses, result)
        suspects = suspects_rows(result.isolated, result.scores, losses, train.labels, info["class_names"],
                                 info["sources"])
        write_suspects_report(SUSPECTS_REPORT, suspects)
        top = suspects[:SUSPECTS_SHOWN]
        plot_image_grid(train.images[[row["index"] for row in top]],
                        [f"#{row['rank']} {row['source'].rsplit('/', 1)[-1] or 'index ' + str(row['index'])}\n"
                         f"{row['class_name']}, loss {float(row['partial_loss']):.2g}" for row in top],
                        SUSPECTS_GRID, f"top {len(top)} of {len(suspects)} isolated samples, most suspicious first")
        quarantine_samples = result.details.get("quarantine_training_count", 0)  # summed over rounds
        isolated_per_class = torch.bincount(train.labels[result.isolated], minlength=info["num_classes"])
        summary = {**result.details, "isolated_count": int(result.isolated.numel()),
                   "isolated_per_class": {str(c): int(n) for c, n in enumerate(isolated_per_class.tolist())},
                   "sample_epochs": quarantine_samples * params.isolation.quarantine_epochs,
                   "isolated_share": result.isolated.numel() / len(train),
                   "wall_seconds": time.perf_counter() - started}
        write_json(METRICS_DIR / "isolate.json", summary)
        run.log_metrics(flatten(summary))  # isolated_per_class.<label>, diversity_gap.<label>, …
        run.log_artifact(LOSSES_CSV)
        run.log_artifact(SUSPECTS_REPORT)
        run.log_artifact(SUSPECTS_GRID)
        print(f"isolated {summary['isolated_count']} of {len(train)} samples", file=sys.stderr)


def finetune(params: Params) -> None:
    import torch

    from ptdefense.artifacts import write_json
    from ptdefense.data.dataset import ImageSet, load_npz
    from ptdefense.defenses.pt import finetune_model
    from ptdefense.models import build_model
    from ptdefense.models.io import load_model, save_model
    from ptdefense.tracking import StageRun
    from ptdefense.training import FitConfig

    device = _setup(params)
    train = ImageSet.load(TRAIN_SET)
    isolated = torch.from_numpy(load_npz(ISOLATED, "isolate", ("isolated_indices",))["isolated_indices"]).long()
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[isolated] = False
    retained, suspects = train.subset(torch.nonzero(keep).flatten()), train.subset(isolated)
    spec = _dataset_spec(params, train)
    with StageRun("finetune", params, _stage_params(params, "finetune")) as run:
        torch.manual_seed(params.seed + 2)
        if params.finetune.init == "scratch":
            model = build_model(spec["architecture"], spec["in_channels"], spec["num_classes"], spec["width"])
        else:
            source = BACKDOORED_MODEL if params.finetune.init == "backdoored" else PARTIAL_MODEL
            model, _ = load_model(source, "train-backdoored" if params.finetune.init == "backdoored" else "partial-train")
        config = FitConfig(**params.finetune.model_dump(exclude={"init", "unlearn", "unlearn_weight"}))
        started = time.perf_counter()
        history = finetune_model(model, retained, suspects if params.finetune.unlearn else None, config, device,
                                 params.seed + 2, params.finetune.unlearn_weight,
                                 on_epoch_end=_epoch_logger(run, "", _test_evaluator(model, device)))
        save_model(model, DEFENDED_MODEL, {**spec, "freeze_layers": 0, "stage": "finetune", "init": params.finetune.init})
        final = {**history[-1], "retained_count": len(retained), "isolated_count": len(suspects),
                 "wall_seconds": time.perf_counter() - started, "sample_epochs": config.epochs * len(retained)}
        write_json(METRICS_DIR / "finetune.json", final)
        run.log_metrics(_not_per_epoch(final, history, evaluated=True))
        run.log_artifact(DEFENDED_MODEL)


def abl(params: Params) -> None:
    """The ABL baseline, on the same poisoned data and model as PT."""
    import numpy as np
    import torch

    from ptdefense.artifacts import atomic_path, write_json
    from ptdefense.data.dataset import ImageSet
    from ptdefense.defenses.abl import run_abl
    from ptdefense.models import build_model
    from ptdefense.models.io import save_model
    from ptdefense.tracking import StageRun

    device = _setup(params)
    train = ImageSet.load(TRAIN_SET)
    spec = _dataset_spec(params, train)
    with StageRun("abl", params, _stage_params(params, "model", "abl")) as run:
        torch.manual_seed(params.seed + 4)
        model = build_model(spec["architecture"], spec["in_channels"], spec["num_classes"], spec["width"])
        evaluator = _test_evaluator(model, device)
        completed = {"epochs": 0}

        def logger(phase: str):
            inner = _epoch_logger(run, f"{phase}/", evaluator)

            def on_epoch_end(epoch: int, stats: dict) -> None:
                completed["epochs"] += 1  # one step axis across the three phases
                inner(completed["epochs"] - 1, stats)

            return on_epoch_end

        started = time.perf_counter()
        result = run_abl(model, train, params.abl, device, params.seed + 4, on_epoch_end=logger)
        save_model(model, ABL_MODEL, {**spec, "freeze_layers": 0, "stage": "abl"})
        with atomic_path(ABL_ISOLATION) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, isolated_indices=result.isolated.numpy().astype(np.int64),
                     isolation_losses=result.isolation_losses.numpy().astype(np.float32))
        final = {"isolated_count": int(result.isolated.numel()), "wall_seconds": time.perf_counter() - started,
                 "sample_epochs": result.sample_epochs, **evaluator()}
        for phase, history in result.history.items():
            if history:
                final[f"{phase}_train_loss"] = history[-1]["train_loss"]
        write_json(METRICS_DIR / "abl.json", final)
        run.log_metrics(final)
        run.log_artifact(ABL_MODEL)
        asr = final.get("attack_success_rate")
        print(f"ABL: isolated {final['isolated_count']} of {len(train)}, clean accuracy {final['clean_accuracy']:.4f}"
              + ("" if asr is None else f", attack success rate {asr:.4f}"), file=sys.stderr)


def clean_reference(params: Params) -> None:
    """The victim's model and budget trained on the truly clean samples only.

    It bounds what a defense can reach (clean accuracy from above, attack success rate from below).
    It reads the true poison indices, so it is evaluation-only knowledge, never a defense.
    """
    import torch

    from ptdefense.artifacts import write_json
    from ptdefense.data.dataset import ImageSet, load_npz
    from ptdefense.models import build_model
    from ptdefense.models.io import save_model, save_skipped
    from ptdefense.tracking import StageRun
    from ptdefense.training import FitConfig, fit

    device = _setup(params)
    train = ImageSet.load(TRAIN_SET)
    truth = load_npz(TRUTH, "poison-data", ("poison_indices", "cross_indices"))
    touched = torch.zeros(len(train), dtype=torch.bool)
    for key in ("poison_indices", "cross_indices"):  # WaNet's noise samples are the attacker's work too
        touched[torch.from_numpy(truth[key]).long()] = True
    clean = train.subset(torch.nonzero(~touched).flatten())
    spec = _dataset_spec(params, train)
    with StageRun("clean-reference", params, _stage_params(params, "model", "train")) as run:
        if not touched.any():  # a scan with no (or an empty) list of known poison: nothing to remove
            reason = ("no training sample is known to be poisoned (attack.name none, and data.poison_indices "
                      "unset or listing no training sample), so it would train on exactly the data of no defense")
            save_skipped(CLEAN_REFERENCE_MODEL, reason)
            write_json(METRICS_DIR / "clean_reference.json", {"skipped": reason, "wall_seconds": 0.0, "sample_epochs": 0})
            print(f"clean reference skipped: {reason}", file=sys.stderr)
            return
        torch.manual_seed(params.seed)
        model = build_model(spec["architecture"], spec["in_channels"], spec["num_classes"], spec["width"])
        config = FitConfig(**params.train.model_dump())
        evaluator = _test_evaluator(model, device)
        started = time.perf_counter()
        history = fit(model, clean, config, device, params.seed, on_epoch_end=_epoch_logger(run, "", evaluator),
                      description="clean reference")
        save_model(model, CLEAN_REFERENCE_MODEL, {**spec, "freeze_layers": 0, "stage": "clean-reference"})
        final = {**history[-1], **evaluator(), "clean_train_count": len(clean),
                 "wall_seconds": time.perf_counter() - started, "sample_epochs": config.epochs * len(clean)}
        write_json(METRICS_DIR / "clean_reference.json", final)
        run.log_metrics(_not_per_epoch(final, history, evaluated=True))
        run.log_artifact(CLEAN_REFERENCE_MODEL)


def evaluate(params: Params) -> None:
    from ptdefense.evaluation import evaluate_pipeline
    from ptdefense.tracking import StageRun

    device = _setup(params)
    with StageRun("evaluate", params, _stage_params(params, "attack")) as run:
        metrics, artifacts = evaluate_pipeline(params, device)
        run.log_metrics(metrics)
        run.log_pipeline_metrics(metrics)
        for path in artifacts:
            run.log_artifact(path)
