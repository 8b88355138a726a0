"""Property-based tests: random and hostile params.yaml content against the schema.

Every document must end in one of two ways: a valid Params whose numbers are all finite and fit the
trainers (int64), or a ParamsError that names each offending key. Never another exception, and
never a traceback from deep inside a stage (the last test runs the real stage entry point).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptdefense.params import ParamsError, Params, load_params, validate_params
from ptdefense.tracking import flatten

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
LEAF_PATHS = sorted(flatten(REPO_PARAMS))  # "seed", "data.root", "attack.badnets.patch_size", …
# Keys that are shares of a set: 0 < value < 1.
SHARES = ["attack.poison_rate", "data.test_split", "isolation.ratio", "isolation.seed_ratio", "abl.isolation_ratio",
          "isolation.quarantine_threshold", "isolation.seed_confidence"]
SECTIONS = sorted(key for key, value in REPO_PARAMS.items() if isinstance(value, dict))

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostile_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**70, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 1.5, 1e308, -1e-308, 0.0]),
    st.text(max_size=40),
    st.sampled_from(["", "3", "0.1", "yes", "null", "../../etc/passwd", "/tmp/x", "data/../../x",
                     "sqlite:///../escape.db", "\x00", "resnet_small", "auto", "badnets"]),
)
hostile_values = st.recursive(hostile_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def _assert_outcome(document: object) -> Params | ParamsError:
    """The one property: a valid Params with sane numbers, or a ParamsError that names keys."""
    try:
        params = validate_params(document)
    except ParamsError as error:
        message = str(error)
        assert message.startswith("invalid params.yaml"), message
        assert "Traceback" not in message
        for line in message.splitlines()[1:]:
            assert line.startswith("  ") and ": " in line, line  # "  <key path>: <what is wrong>"
        return error
    for key, value in flatten(params.model_dump()).items():
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
        if isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value < 2**63, (key, value)
    return params


def _set(document: dict, dotted: str, value: object) -> dict:
    node = document
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return document


def _fresh() -> dict:
    return yaml.safe_load(yaml.safe_dump(REPO_PARAMS))


@FUZZ
@given(hostile_values)
def test_any_document_is_valid_or_a_clear_error(document):
    _assert_outcome(document)


@FUZZ
@given(st.dictionaries(st.sampled_from(SECTIONS + ["seed", "freeze_layers", "device"]), hostile_values, max_size=4))
def test_hostile_sections_are_valid_or_a_clear_error(document):
    _assert_outcome(document)


@FUZZ
@given(st.sampled_from(LEAF_PATHS), hostile_values)
def test_one_hostile_value_in_the_repo_file_is_rejected_by_name(path, value):
    outcome = _assert_outcome(_set(_fresh(), path, value))
    if isinstance(outcome, ParamsError):
        # The error names the key that was changed (or, for a cross-check, the key it clashes with).
        named = {line.split(":", 1)[0].strip() for line in str(outcome).splitlines()[1:]}
        assert any(name == path or name.startswith(path + ".") or path.startswith(name + ".") or name == "<top level>"
                   or name == path.rsplit(".", 1)[0] for name in named), (path, value, str(outcome))


@FUZZ
@given(st.sampled_from(LEAF_PATHS), st.sampled_from([math.nan, math.inf, -math.inf, 2**70, -(2**70), 1e308]))
def test_non_finite_and_huge_numbers_never_validate(path, value):
    document = _set(_fresh(), path, value)
    with pytest.raises(ParamsError):
        validate_params(document)


@FUZZ
@given(st.sampled_from(SHARES),
       st.floats(max_value=0.0, allow_nan=False) | st.floats(min_value=1.0, allow_nan=False))
def test_ratios_outside_zero_one_are_rejected(path, value):
    document = _set(_fresh(), path, value)
    with pytest.raises(ParamsError, match=path.replace(".", r"\.")):
        validate_params(document)


@FUZZ
@given(st.sampled_from([None] + SECTIONS), st.text(min_size=1, max_size=20).filter(lambda key: "." not in key))
def test_unknown_keys_are_named(section, key):
    document = _fresh()
    target = document if section is None else document[section]
    if key in target or (section == "attack" and key in REPO_PARAMS["attack"]):
        return
    target[key] = 1
    with pytest.raises(ParamsError, match="unknown key"):
        validate_params(document)


@FUZZ
@given(st.sampled_from(["data.root", "data.poison_indices"]),
       st.lists(st.sampled_from(["..", "data", "raw", ".", "x"]), min_size=1, max_size=6))
def test_relative_data_paths_cannot_leave_data(path, parts):
    relative = "/".join(parts)
    document = _set(_fresh(), path, relative)
    if path == "data.poison_indices":
        document["attack"]["name"] = "none"
        document["attack"]["poison_rate"] = None
    normalised = os.path.normpath(relative)  # judged on the text: no symlink is resolved
    inside = normalised == "data" or normalised.startswith("data/")
    if inside:
        validate_params(document)
    else:
        with pytest.raises(ParamsError, match=f"{path}: .*points outside the repository's data/ directory"):
            validate_params(document)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_file_content_is_valid_or_a_clear_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    path.write_bytes(content)
    try:
        load_params(path)
    except ParamsError as error:
        assert str(path) in str(error) or "invalid" in str(error)


HOSTILE_FILES = {
    "nan learning rate": "train:\n  lr: .nan\n",
    "huge batch": f"partial:\n  batch_size: {2**70}\n",
    "negative ratio": "isolation:\n  ratio: -0.1\n",
    "unknown section": "trian:\n  epochs: 3\n",
    "escaping data root": "data:\n  root: ../../../etc\n",
    "binary garbage": "\udcff\udcfe\x00\x01",
    "deep nesting": "a: " + "[" * 5000 + "]" * 5000 + "\n",
}


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_stage_entry_point_reports_hostile_params_in_one_clear_error(tmp_path, name):
    """The real stage script, as DVC runs it: exit status 2, `error: …`, no traceback, no outputs."""
    (tmp_path / "params.yaml").write_bytes(HOSTILE_FILES[name].encode("utf-8", "surrogateescape"))
    result = subprocess.run([sys.executable, str(REPO / "stages/poison_data.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
