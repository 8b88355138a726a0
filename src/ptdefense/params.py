"""Typed schema of params.yaml.

Every stage validates the whole file before doing any work, so an unknown key, a wrong type or an
impossible value stops the pipeline at once with a message that names the key and the valid values.
The schema mirrors params.yaml section by section; `freeze_layers` and `seed` are top-level so that
`dvc exp run -S freeze_layers=3` works as written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from ptdefense.attacks.settings import ATTACK_SETTINGS, attack_names, attack_settings
from ptdefense.data.catalogue import DATASET_NAMES, dataset_num_classes
from ptdefense.models.catalogue import model_names, num_blocks
from ptdefense.schema import StrictSection

DEFAULT_PARAMS_FILE = "params.yaml"

Ratio = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(ge=1, le=1_000_000)]
PositiveFloat = Annotated[float, Field(gt=0.0, le=1e3)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, le=1e3)]


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid. The message names the key and the fix."""


def _registered(value: str, kind: str, names: list[str]) -> str:
    """Registry names are open-ended (a new attack is one new module), so they are checked, not typed."""
    if value not in names:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(names)}")
    return value


DATA_DIRECTORY = "data"


def _contained_path(value: str, directory: str | None) -> str:
    """A relative path from params must stay inside `directory` of the repository (None: the
    repository itself); an absolute (or ~) path is taken as a deliberate choice.

    The check is on the text (normalised `..`), not on the resolved file: a symlink that the user
    placed under data/ is as deliberate as an absolute path.
    """
    if "\x00" in value:
        raise ValueError("the path contains a NUL character")
    if not value.strip():
        raise ValueError("the path is empty; give one")
    if value.startswith("~") or os.path.isabs(value):
        return value
    normalised = os.path.normpath(value)
    inside = directory is None and not (normalised == ".." or normalised.startswith("../")) or (
        directory is not None and (normalised == directory or normalised.startswith(directory + "/")))
    if not inside:
        where = f"the repository's {directory}/ directory" if directory else "the repository"
        raise ValueError(f"{value!r} points outside {where} (it normalises to {normalised!r}); keep the "
                         f"files under {directory or '.'}/, or give an absolute path to use a place elsewhere on "
                         "purpose")
    return value


class DataParams(StrictSection):
    # fashion_mnist (offline default) | mnist | cifar10 | gtsrb: local copy in `root` first, then
    # torchvision's download. imagefolder: one subfolder per class (under train/ and test/, or at
    # the top with test_split). npz: `root` is an .npz file with x_train, y_train, x_test, y_test.
    name: str = "fashion_mnist"
    # Relative paths are resolved against the repository root (the real one, also under
    # `dvc exp run --temp/--queue`), absolute paths are taken as given.
    root: str = "data/raw"
    download: bool = True
    # Optional subsets, for tiny test configurations. null = the whole split.
    train_limit: PositiveInt | None = None
    test_limit: PositiveInt | None = None
    # Resize every image to image_size × image_size; null = as stored (gtsrb: 32). Needed for a
    # folder whose images differ in size.
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None
    # imagefolder only: hold out this share of each class as the test set (no test/ folder).
    test_split: Ratio | None = None
    # attack.name none only: a text file naming the known poisoned training samples, one per line,
    # as an index or as a file path relative to `root` (image folders). poison-data copies it into
    # the truth file, which no defense reads: only evaluate and the clean reference do.
    poison_indices: str | None = None

    _known_dataset = field_validator("name")(lambda value: _registered(value, "dataset", list(DATASET_NAMES)))

    @field_validator("root", "poison_indices")
    @classmethod
    def _inside_data_directory(cls, value: str | None) -> str | None:
        return None if value is None else _contained_path(value, DATA_DIRECTORY)

    @model_validator(mode="after")
    def _folder_only(self) -> "DataParams":
        if self.test_split is not None and self.name != "imagefolder":
            raise ValueError(f"data.test_split applies to data.name imagefolder only (got {self.name!r}); "
                             "set it to null")
        return self


class _AttackCommon(StrictSection):
    name: str = "badnets"
    # Share of the whole training set that is poisoned; null = the attack's standard rate
    # (10% for dirty-label attacks, half of the target class for clean-label ones).
    poison_rate: Ratio | None = None
    target_label: Annotated[int, Field(ge=0, le=10_000)] = 0

    _known_attack = field_validator("name")(lambda value: _registered(value, "attack", attack_names()))

    def settings(self) -> StrictSection:
        """The chosen attack's own section (attack.<name>); an attack without knobs has none."""
        return getattr(self, self.name, None) or attack_settings(self.name)()


# One sub-section per registered attack, typed by the attack's own Settings: a new attack module
# brings its params section with it.
AttackParams = create_model(
    "AttackParams", __base__=_AttackCommon,
    **{name: (settings, settings()) for name, settings in ATTACK_SETTINGS.items() if settings.model_fields},
)


class ModelParams(StrictSection):
    name: str = "resnet_small"
    # Channel width of the first stage; null = the model's own default (resnet_small 16, resnet18 and
    # preact_resnet18 64, vgg_small 32).
    width: Annotated[int, Field(ge=4, le=512)] | None = None

    _known_model = field_validator("name")(lambda value: _registered(value, "model", model_names()))


class OptimiserParams(StrictSection):
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 128
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    # fp32: the same numbers on every CPU. bf16 autocast halves training time on CPUs with native
    # bf16 (AVX512-BF16, AMX) and GPUs, but is 8x slower where it is emulated (AVX2: 107 against
    # 829 images/s, resnet_small), and its kernels round differently from one CPU to the next.
    precision: Literal["fp32", "bf16"] = "fp32"
    # Train at least this many optimiser steps: a small set gets more epochs, so that its budget
    # scales with its size (3 epochs of 4,000 images at batch 128 are 94 steps, and the partial model
    # then learns nothing). 800 leaves every 50k/60k configuration of the docs at its epochs (the
    # tightest, CIFAR-10 WaNet's clean reference on 35,000 images, takes 3 × 274 = 822 steps).
    min_steps: Annotated[int, Field(ge=0, le=10_000_000)] = 800
    # one_cycle: warm-up then cosine annealing (this project's short budgets); cosine: plain cosine
    # annealing from lr (BackdoorBench's recipe, presets/backdoorbench-cifar10.yaml).
    schedule: Literal["one_cycle", "cosine"] = "one_cycle"
    # crop_flip: pad 4, random crop, random horizontal flip, per sample, from the seeded generator.
    augment: Literal["none", "crop_flip"] = "none"


class OptimParams(OptimiserParams):
    epochs: PositiveInt = 3


class TrainParams(OptimParams):
    """The victim ("no defense") model trained on the poisoned set."""


class PartialParams(OptimParams):
    """Partial training: the first `freeze_layers` blocks stay frozen, the rest is trained."""

    epochs: PositiveInt = 3
    # Frozen BatchNorm layers keep the statistics of their initialisation (mean 0, var 1), which
    # shrinks features to almost nothing; "recalibrate" re-estimates them on the data first.
    frozen_bn: Literal["recalibrate", "initial"] = "recalibrate"


class IsolationParams(StrictSection):
    # ratio: the lowest-loss `ratio` share, globally (naive PT).
    # auto: candidate labels by robust z-scores of five signs of poison, each confirmed by a
    # held-out quarantine test before anything is isolated (defenses/isolation.py).
    # quarantine: the same, with seed_ratio × N lowest-loss seeds shared among the candidates.
    method: Literal["auto", "quarantine", "ratio"] = "auto"
    ratio: Ratio = 0.1  # method ratio only
    seed_ratio: Ratio = 0.05  # method quarantine only
    # Loss statistics' seeds (clean-label candidates): the samples that the low-loss mode of a
    # two-component mixture on the label's log-losses holds with at least this posterior.
    seed_confidence: Ratio = 0.99
    # A label is a candidate when one of its statistics' modified z-scores against the other labels
    # reaches this (3.5: Iglewicz and Hoaglin's outlier cut; defenses/signs.py states the null model).
    flag_z: Annotated[float, Field(gt=0.0, le=100.0)] = 3.5
    # The held-out quarantine test's level, shared (Bonferroni) among the candidate labels and passes.
    confirm_alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.001
    # Passes of the test at most: a cleared candidate whose held-out seeds led its controls is tested
    # again with the poison that competed with its seeds left out of training (defenses/quarantine.py).
    confirm_passes: Annotated[int, Field(ge=1, le=10)] = 3
    quarantine_epochs: PositiveInt = 3
    # The quarantine seeds are repeated up to this share of the quarantine model's data, so that a
    # thin trigger is seen often enough to be learnt (defenses/quarantine.py); 0 = no repeats.
    quarantine_share: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.05
    # Rounds of quarantine training; each later round seeds with the previous round's isolated set.
    quarantine_rounds: Annotated[int, Field(ge=1, le=10)] = 2
    # A sample counts as quarantined, in the held-out tests, when its quarantine probability exceeds this.
    quarantine_threshold: Ratio = 0.1
    # What is isolated from a flagged label: its samples whose posterior for the upper mode of a
    # two-mode mixture on their quarantine log-odds reaches this (defenses/modes.py). 0.03: keeping
    # one poisoned sample is taken to cost as much as dropping about thirty clean ones.
    mode_posterior: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.03
    lr: PositiveFloat = 0.05
    train_batch_size: Annotated[int, Field(ge=1, le=65_536)] = 128
    precision: Literal["fp32", "bf16"] = "fp32"
    min_steps: Annotated[int, Field(ge=0, le=10_000_000)] = 800  # for each quarantine model
    # Batch size of the partial model's inference pass (per-sample losses and features).
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 256


class VerdictParams(StrictSection):
    """The verdict on the training set (defenses/verdict.py): with nothing isolated, "no_poison_found"
    only when every label's statistics lie below `clear_z`, a modified z-score against the other
    labels; otherwise "inconclusive"."""

    clear_z: Annotated[float, Field(gt=0.0, le=100.0)] = 3.0


class FinetuneParams(OptimParams):
    # Where the clean model starts: trained afresh, or fine-tuned from an earlier model.
    init: Literal["scratch", "backdoored", "partial"] = "scratch"
    epochs: PositiveInt = 3
    # Push isolated samples away from their (possibly poisoned) labels while training on the retained
    # ones, so that poison left in the retained set cannot implant the backdoor again: the confident
    # ones (defenses/modes.py, upper-mode posterior ≥ 0.5), all of them, or none. true/false: all/none.
    unlearn: Literal["confident", "all", "none"] = "confident"
    unlearn_weight: NonNegativeFloat = 1.0

    @field_validator("unlearn", mode="before")
    @classmethod
    def _unlearn_choice(cls, value: object) -> object:
        if isinstance(value, bool):  # the section's earlier boolean form
            return "all" if value else "none"
        if value not in ("confident", "all", "none"):
            raise ValueError(f"invalid value {value!r}; use confident (the isolated samples the final cut "
                             "is sure of), all (every isolated sample) or none (no unlearning)")
        return value


class AblParams(OptimiserParams):
    """The ABL baseline (defenses/abl.py): isolation with a held loss, then retrain, then unlearn."""

    loss: Literal["lga", "flooding"] = "lga"
    # The loss level held during isolation (ABL's paper and code: 0.5).
    gamma: Annotated[float, Field(gt=0.0, le=10.0)] = 0.5
    isolation_epochs: PositiveInt = 3
    # Share of the training set isolated, lowest loss first, globally (ABL: 1%).
    isolation_ratio: Ratio = 0.01
    retrain_epochs: PositiveInt = 3
    # Gradient ascent on the isolated samples (ABL: 5 epochs at lr 5e-4); 0 skips it.
    unlearn_epochs: Annotated[int, Field(ge=0, le=1_000)] = 5
    unlearn_lr: PositiveFloat = 5e-4


class MlflowParams(StrictSection):
    enabled: bool = True
    # null = $MLFLOW_TRACKING_URI, else sqlite:///<repo root>/mlflow.db
    tracking_uri: str | None = None
    experiment_name: Annotated[str, Field(min_length=1, max_length=200)] = "ptdefense"
    # Fail the stage when the tracking store cannot be reached (default: warn in one line).
    required: bool = False
    # PT's defended model is registered as <this>-<data.name>-<model.name> (null: not registered).
    registered_model: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")] | None = \
        "ptdefense-defended"

    @field_validator("tracking_uri")
    @classmethod
    def _relative_store_inside_repo(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            _contained_path(value.removeprefix("sqlite:///"), None)
        return value


class Params(StrictSection):
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    freeze_layers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"  # the model bounds it: _cross_checks
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    data: DataParams = DataParams()
    attack: AttackParams = AttackParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    partial: PartialParams = PartialParams()
    isolation: IsolationParams = IsolationParams()
    verdict: VerdictParams = VerdictParams()
    finetune: FinetuneParams = FinetuneParams()
    abl: AblParams = AblParams()
    mlflow: MlflowParams = MlflowParams()

    @field_validator("freeze_layers", mode="before")
    @classmethod
    def _auto_or_block_count(cls, value: object) -> object:
        # Checked here in full, so a bad value gets this one line, not one message per union member.
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and value != "auto") \
                or (isinstance(value, int) and value < 0):
            raise ValueError(f"invalid value {value!r}; use auto (picked from the data by partial-train) "
                             "or the number of leading blocks to freeze (0 to the model's blocks - 1)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        num_classes = dataset_num_classes(self.data.name)  # None: known once the files are read
        if self.attack.name == "none" and self.attack.poison_rate is not None:
            raise ValueError("attack.poison_rate has no meaning with attack.name none (nothing is poisoned); "
                             "set it to null")
        if self.data.poison_indices is not None and self.attack.name != "none":
            raise ValueError(
                f"data.poison_indices lists the poison of a dataset that arrives poisoned, so it needs "
                f"attack.name: none (got {self.attack.name!r}); set one of them accordingly"
            )
        if num_classes is not None and self.attack.name != "none" and self.attack.target_label >= num_classes:
            raise ValueError(
                f"attack.target_label={self.attack.target_label} is out of range: "
                f"{self.data.name} has classes 0..{num_classes - 1}"
            )
        blocks = num_blocks(self.model.name)
        if self.freeze_layers != "auto" and self.freeze_layers > blocks - 1:
            raise ValueError(
                f"freeze_layers={self.freeze_layers} is too large for model {self.model.name!r}, "
                f"which has {blocks} blocks; valid values: 0..{blocks - 1} "
                "(at least one block must stay trainable)"
            )
        return self

    def digest(self) -> str:
        """A short, stable hash of the validated params: groups one pipeline's MLflow runs."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid {source}:"]
    for item in error.errors():
        # repr() for keys that are not plain text (YAML allows control characters and numbers).
        key = ".".join(part if isinstance(part, str) and part.isprintable() and part else repr(part)
                       for part in item["loc"]) or "<top level>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and section)"
        elif item["type"] == "literal_error":
            message = f"invalid value {item.get('input')!r}; {item['msg'].lower()}"
        elif item["type"] == "model_type" or item["type"] == "model_attributes_type":
            message = "must be a mapping (a section of keys)"
        if key == "<top level>" and message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        lines.append(f"  {key}: {message.removeprefix('Value error, ')}")
    return "\n".join(lines)


def validate_params(raw: object, source: str = DEFAULT_PARAMS_FILE) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"invalid {source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_errors(error, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stage from the repository root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    except RecursionError:
        raise ParamsError(f"{path} nests too deeply to be a params file") from None
    return validate_params(raw, str(path))

