"""benchmarks/robustness.py --adopt: a workspace is recorded as a cell only if it ran exactly that cell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import robustness  # noqa: E402


def cell(cell_id: str) -> dict:
    return next(cell for cell in robustness.CELLS if cell["id"] == cell_id)


def test_a_workspace_with_other_params_is_refused(tmp_path):
    params = yaml.safe_load((robustness.ROOT / "params.yaml").read_text())
    params["data"]["train_limit"] = 4000  # a smaller run than the full-size cell
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match="not the committed params"):
        robustness.adopt_cell(cell("fashion_mnist-full-badnets-std"), tmp_path, tmp_path, tmp_path)


def test_the_committed_params_are_the_default_cell_and_no_other():
    committed = yaml.safe_load((robustness.ROOT / "params.yaml").read_text())
    merged = {cell_id: robustness.merge(committed, robustness.cell_params(cell(cell_id), Path("/unused"), Path("/unused")))
              for cell_id in ("fashion_mnist-full-badnets-std", "fashion_mnist-full-blend-std",
                              "fashion_mnist-full-badnets-5pct")}
    assert merged["fashion_mnist-full-badnets-std"] == committed
    assert merged["fashion_mnist-full-blend-std"] != committed
    assert merged["fashion_mnist-full-badnets-5pct"] != committed


def test_a_clean_cell_takes_its_clean_reference_from_the_no_defense_model(tmp_path):
    """With nothing poisoned, the clean-reference stage skips itself (its model would be the
    no-defense one); the cell records no defense's figures for it, and says so."""
    import json

    (tmp_path / "metrics").mkdir()
    (tmp_path / "reports").mkdir()
    scores = {"no_defense": {"clean_accuracy": 0.98, "attack_success_rate": None},
              "pt": {"clean_accuracy": 0.97, "attack_success_rate": None, "isolated_count": 0, "wall_seconds": 9.0},
              "abl": {"clean_accuracy": 0.93, "attack_success_rate": None, "isolated_count": 50}}
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(scores))
    (tmp_path / "reports" / "verdict.json").write_text(json.dumps({"verdict": "inconclusive", "verdict_reason": "r"}))
    result = robustness.summarise(cell("clean-mnist-5k"), tmp_path, 1.0)
    assert result["clean_reference"] == {"clean_accuracy": 0.98, "attack_success_rate": None}
    assert result["clean_reference_is_no_defense"] is True
    assert result["pt"]["verdict"] == "inconclusive" and result["pt"]["isolated_count"] == 0
    poisoned = {**cell("small-mnist-5k-badnets")}
    with pytest.raises(KeyError):  # a poisoned cell without its clean reference is an error, not a guess
        robustness.summarise(poisoned, tmp_path, 1.0)


def test_a_workspace_that_ran_other_stage_code_is_refused(tmp_path):
    """Same params, other code: its figures are not this checkout's, so it must be run, not adopted."""
    cell_id = "fashion_mnist-full-blend-std"
    wanted = robustness.merge(yaml.safe_load((robustness.ROOT / "params.yaml").read_text()),
                              robustness.cell_params(cell(cell_id), tmp_path, tmp_path))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(wanted))
    for name in ("dvc.yaml", "stages/isolate.py", "src/ptdefense/defenses/modes.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((robustness.ROOT / name).read_bytes())
    (tmp_path / "src/ptdefense/defenses/modes.py").write_text("# an edited cut\n")
    differing = robustness.stage_code_differences(tmp_path)
    assert "src/ptdefense/defenses/modes.py" in differing
    assert "stages/isolate.py" not in differing and "dvc.yaml" not in differing
    with pytest.raises(SystemExit, match="ran other stage code"):
        robustness.adopt_cell(cell(cell_id), tmp_path, tmp_path, tmp_path)


def _workspace(path: Path, *subjects: str) -> Path:
    from dvc_workspace import run

    path.mkdir(parents=True)
    run(["git", "init", "-q"], path)
    for subject in subjects:
        run(["git", "commit", "-q", "--allow-empty", "-m", subject], path)
    return path


def test_a_workspace_names_the_commit_it_was_copied_from(tmp_path):
    head = robustness.commit().removesuffix("-dirty")
    # not a commit here, so the layout does not name it
    assert robustness.source_commit(_workspace(tmp_path / "abc1234" / "some-cell", "workspace")) is None
    # the --work layout, <commit>/<cell>, of older workspaces
    assert robustness.source_commit(_workspace(tmp_path / head / "some-cell", "workspace")) == head
    # a branch name moves: not taken for a commit
    assert robustness.source_commit(_workspace(tmp_path / "main" / "some-cell", "workspace")) is None
    # the copy's first commit names it, whatever came after
    named = _workspace(tmp_path / "named", "workspace of 0123abc", "a later commit in the copy")
    assert robustness.source_commit(named) == "0123abc"
