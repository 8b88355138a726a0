"""The params.yaml schema: what it accepts, what it rejects, and how it names the problem."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from ptdefense.params import Params, ParamsError, load_params, validate_params

REPO = Path(__file__).resolve().parents[1]


def _error(raw: object) -> str:
    with pytest.raises(ParamsError) as info:
        validate_params(raw)
    return str(info.value)


# --- the repository's own file and the defaults -------------------------------------------------

def test_repo_params_yaml_validates():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert isinstance(params, Params)
    # Every value in the file made it into the model unchanged.
    assert params.freeze_layers == raw["freeze_layers"]
    assert params.seed == raw["seed"]
    assert params.attack.name == raw["attack"]["name"]
    assert params.attack.poison_rate == raw["attack"]["poison_rate"]
    assert params.model.name == raw["model"]["name"]
    assert params.train.epochs == raw["train"]["epochs"]
    assert params.isolation.method == raw["isolation"]["method"]
    assert params.finetune.init == raw["finetune"]["init"]


def test_repo_params_yaml_covers_every_schema_key():
    """params.yaml mirrors the schema: no section or key of Params is left implicit."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    dumped = Params().model_dump()
    assert set(raw) == set(dumped)
    for section, value in dumped.items():
        if isinstance(value, dict):
            assert set(raw[section]) == set(value), section


@pytest.mark.parametrize("raw", [{}, None])
def test_defaults(raw):
    params = validate_params(raw)
    assert params.seed == 0
    assert params.freeze_layers == "auto"
    assert params.device == "auto"
    assert params.data.name == "fashion_mnist"
    assert params.data.train_limit is None
    assert params.attack.name == "badnets"
    assert params.attack.poison_rate is None  # the attack's standard rate
    assert params.attack.target_label == 0
    assert params.attack.badnets.patch_size == 3
    assert params.attack.badnets.patch_value == 255
    assert params.attack.settings() == params.attack.badnets
    assert params.model.name == "resnet_small"
    assert params.model.width is None
    assert params.train.epochs == 3
    assert params.train.precision == "fp32"
    assert params.partial.frozen_bn == "recalibrate"
    assert params.isolation.method == "auto"
    assert params.finetune.init == "scratch"
    assert params.finetune.unlearn == "confident"
    assert params.mlflow.required is False


def test_partial_section_keeps_other_defaults():
    params = validate_params({"train": {"epochs": 7}})
    assert params.train.epochs == 7
    assert params.train.batch_size == 128
    assert params.partial.epochs == 3


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# nothing but a comment\n")
    assert load_params(path) == Params()


# --- unknown keys and wrong types ---------------------------------------------------------------

def test_unknown_top_level_key():
    message = _error({"freeze_layer": 2})
    assert "freeze_layer" in message
    assert "unknown key" in message


def test_unknown_key_inside_section_names_the_path():
    message = _error({"train": {"epoch": 3}})
    assert "train.epoch" in message
    assert "unknown key" in message


def test_unknown_key_in_nested_section_of_the_repo_file(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["isolation"]["quarantine_epoch"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert "isolation.quarantine_epoch" in str(info.value)
    assert "unknown key" in str(info.value)
    assert str(path) in str(info.value)


def test_all_errors_reported_at_once():
    message = _error({"train": {"epoch": 3}, "partial": {"lr": -1.0}})
    assert "train.epoch" in message
    assert "partial.lr" in message


@pytest.mark.parametrize("key, value", [
    ("epochs", "x"),
    ("epochs", 2.5),
    ("lr", "fast"),
    ("batch_size", [64]),
])
def test_wrong_type_names_the_key(key, value):
    message = _error({"train": {key: value}})
    assert f"train.{key}" in message


def test_section_that_is_not_a_mapping():
    message = _error({"train": 5})
    assert "train" in message
    assert "mapping" in message


@pytest.mark.parametrize("raw", [[1, 2], "freeze_layers: 3", 42])
def test_non_mapping_top_level(raw):
    message = _error(raw)
    assert "mapping" in message
    assert type(raw).__name__ in message


# --- value ranges -------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0, 0.0, 1, 1.0, -0.1, 1.5, math.nan, math.inf])
def test_poison_rate_out_of_range(rate):
    message = _error({"attack": {"poison_rate": rate}})
    assert "attack.poison_rate" in message


@pytest.mark.parametrize("rate", [0.001, 0.1, 0.5, 0.999])
def test_poison_rate_in_range(rate):
    assert validate_params({"attack": {"poison_rate": rate}}).attack.poison_rate == rate


def test_unknown_attack_lists_choices():
    message = _error({"attack": {"name": "blended"}})
    assert "attack.name" in message
    assert "'blended'" in message
    for name in ("badnets", "badnets_all2all", "blend", "label_consistent", "sig", "trojan", "wanet"):
        assert name in message


def test_each_attack_has_its_own_section():
    params = validate_params({"attack": {"name": "wanet", "wanet": {"k": 8, "s": 1.0}}})
    assert params.attack.settings().k == 8 and params.attack.settings().s == 1.0
    assert params.attack.settings().cross_ratio == 2.0  # untouched keys keep their defaults
    assert validate_params({"attack": {"name": "blend", "blend": {"alpha": 0.1}}}).attack.settings().alpha == 0.1


@pytest.mark.parametrize("section, message_part", [
    ({"blend": {"alpha": 1.5}}, "attack.blend.alpha"),
    ({"blend": {"opacity": 0.2}}, "attack.blend.opacity: unknown key"),
    ({"wanet": {"k": 1}}, "attack.wanet.k"),
    ({"sig": {"delta": -3.0}}, "attack.sig.delta"),
    ({"label_consistent": {"surrogate_model": "vgg"}}, "valid choices"),
    ({"kitty": {}}, "attack.kitty: unknown key"),
])
def test_bad_attack_settings(section, message_part):
    assert message_part in _error({"attack": section})


def test_unknown_model_lists_choices():
    message = _error({"model": {"name": "vgg16"}})
    assert "model.name" in message
    assert "vgg16" in message
    assert "resnet_small" in message
    assert "resnet18" in message


@pytest.mark.parametrize("freeze", [5, 6, 64, 1000])
def test_freeze_layers_too_large_for_resnet_small(freeze):
    message = _error({"freeze_layers": freeze})
    assert f"freeze_layers={freeze}" in message
    assert "resnet_small" in message
    assert "0..4" in message


@pytest.mark.parametrize("freeze", [0, 1, 4])
def test_freeze_layers_valid(freeze):
    assert validate_params({"freeze_layers": freeze}).freeze_layers == freeze


def test_freeze_layers_range_follows_the_model():
    # resnet18 has six blocks: 5 is allowed there, 6 is not.
    assert validate_params({"model": {"name": "resnet18"}, "freeze_layers": 5}).freeze_layers == 5
    message = _error({"model": {"name": "resnet18"}, "freeze_layers": 6})
    assert "0..5" in message


def test_freeze_layers_negative_gets_one_message_naming_both_choices():
    message = _error({"freeze_layers": -1})
    assert message.count("freeze_layers") == 1  # not one message per member of the int | "auto" union
    assert "invalid value -1" in message and "auto" in message and "number of leading blocks" in message


def test_freeze_layers_auto_is_the_default_and_is_accepted_as_written():
    assert validate_params({}).freeze_layers == "auto"
    assert validate_params({"freeze_layers": "auto", "model": {"name": "resnet18"}}).freeze_layers == "auto"


@pytest.mark.parametrize("value", ["3", "Auto", "deep", True, 2.5])
def test_freeze_layers_other_than_auto_or_a_count_is_refused_with_both_choices_named(value):
    message = _error({"freeze_layers": value})
    assert "freeze_layers" in message
    assert "auto" in message and "number of leading blocks" in message


@pytest.mark.parametrize("label", [10, 11, 10_000])
def test_target_label_out_of_range(label):
    message = _error({"attack": {"target_label": label}})
    assert f"target_label={label}" in message
    assert "0..9" in message


def test_target_label_negative():
    assert "attack.target_label" in _error({"attack": {"target_label": -1}})


def test_target_label_last_class_ok():
    assert validate_params({"attack": {"target_label": 9}}).attack.target_label == 9


def test_isolation_method_lists_valid_values():
    message = _error({"isolation": {"method": "spectral"}})
    assert "isolation.method" in message
    assert "spectral" in message
    assert "'ratio'" in message
    assert "'quarantine'" in message
    assert "'auto'" in message


@pytest.mark.parametrize("given, meaning", [(True, "all"), (False, "none"), ("confident", "confident")])
def test_finetune_unlearn_keeps_its_boolean_form(given, meaning):
    # `dvc exp run -S finetune.unlearn=false` from before the three-way choice keeps its meaning
    assert validate_params({"finetune": {"unlearn": given}}).finetune.unlearn == meaning


def test_finetune_unlearn_names_its_choices():
    message = _error({"finetune": {"unlearn": "some"}})
    assert "finetune.unlearn" in message and all(word in message for word in ("confident", "all", "none"))


@pytest.mark.parametrize("raw, key", [
    ({"device": "tpu"}, "device"),
    ({"partial": {"frozen_bn": "frozen"}}, "partial.frozen_bn"),
    ({"finetune": {"init": "pretrained"}}, "finetune.init"),
    ({"train": {"precision": "fp16"}}, "train.precision"),
    ({"data": {"name": "svhn"}}, "data.name"),
    ({"data": {"train_limit": 0}}, "data.train_limit"),
    ({"train": {"momentum": 1.0}}, "train.momentum"),
])
def test_other_invalid_values_name_their_key(raw, key):
    assert key in _error(raw)


# --- files --------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ParamsError):
        load_params(tmp_path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [3\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert "not valid YAML" in str(info.value)
    assert str(path) in str(info.value)


def test_yaml_list_top_level(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert "mapping" in str(info.value)


def test_params_error_is_a_value_error():
    assert issubclass(ParamsError, ValueError)


# --- digest -------------------------------------------------------------------------------------

def test_digest_stable_for_equal_params():
    a = validate_params({"freeze_layers": 2, "train": {"epochs": 5}})
    b = validate_params({"train": {"epochs": 5}, "freeze_layers": 2})
    assert a.digest() == b.digest()
    assert a.digest() == a.digest()
    assert len(a.digest()) == 12
    int(a.digest(), 16)  # hex


def test_digest_defaults_equal_explicit_defaults():
    assert validate_params({}).digest() == validate_params({"freeze_layers": "auto", "seed": 0}).digest()


def test_digest_changes_with_freeze_layers():
    assert validate_params({"freeze_layers": 2}).digest() != validate_params({"freeze_layers": 3}).digest()


def test_digest_changes_with_nested_value():
    assert validate_params({"attack": {"poison_rate": 0.1}}).digest() != \
        validate_params({"attack": {"poison_rate": 0.2}}).digest()


@pytest.mark.parametrize("path, inside", [
    ("data/raw", True), ("data/raw/cifar-10-batches-py", True), ("./data/raw", True), ("data/./raw", True),
    ("data//raw", True), ("data/raw/../other", True), ("data", True),
    ("data/..", False), ("data/../..", False), ("./data/../../x", False), ("data//../../x", False),
    ("datasets/x", False), ("data-x", False), ("src/ptdefense", False), (".", False), ("../data/raw", False),
    ("raw", False), ("data\\..\\..\\x", False),  # one odd POSIX name (a backslash is no separator), not under data/
])
def test_relative_data_paths_must_stay_under_data(path, inside):
    """An explicit table (the fuzz test's oracle shares the rule; this one does not)."""
    if inside:
        assert validate_params({"data": {"root": path}}).data.root == path
    else:
        with pytest.raises(ParamsError, match="data.root: .*points outside the repository's data/ directory"):
            validate_params({"data": {"root": path}})


@pytest.mark.parametrize("path", ["/srv/datasets/cifar", "~/datasets/cifar", "/tmp/../etc"])
def test_absolute_data_paths_are_a_deliberate_choice(path):
    assert validate_params({"data": {"root": path}}).data.root == path
