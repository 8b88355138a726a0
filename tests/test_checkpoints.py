"""Per-epoch checkpoints: a fit interrupted and resumed ends bit-identical to an uninterrupted one.

The real-process version (SIGKILL and SIGINT through `dvc repro`) is in test_faults_e2e.py.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from payloads import TouchesMarker
from ptdefense import checkpoints
from ptdefense.artifacts import ArtifactError, temp_prefix, write_json
from ptdefense.checkpoints import checkpointing
from ptdefense.data.dataset import ImageSet
from ptdefense.models.registry import build_model
from ptdefense.training import FitConfig, fit

CPU = torch.device("cpu")
CONFIG = FitConfig(epochs=3, batch_size=64, lr=0.05)


def _data(seed: int = 1, size: int = 384) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (size,), generator=generator))


class Interrupted(KeyboardInterrupt):
    pass


def _stage(root: Path, train: ImageSet, interrupt_at: tuple[int, int] | None = None, config: FitConfig = CONFIG,
           digest: str = "digest", frozen: int = 0):
    """A two-fit "stage": the second model is built from the global RNG left by the first fit, so a
    resume must restore that RNG too. `interrupt_at=(fit, epoch)` raises after that epoch."""
    torch.manual_seed(0)

    def stopper(fit_number: int):
        def on_epoch_end(epoch: int, stats: dict) -> None:
            if interrupt_at == (fit_number, epoch + 1):
                raise Interrupted

        return on_epoch_end

    with checkpointing("probe", digest, root) as scope:
        first = build_model("resnet_small", 1, 10, None)
        first.freeze_prefix(frozen)
        first_history = fit(first, train, config, CPU, 0, on_epoch_end=stopper(1), description="first")
        second = build_model("resnet_small", 1, 10, None)
        noise = torch.rand(3)  # more global RNG use between fits
        second_history = fit(second, train, config, CPU, 1, on_epoch_end=stopper(2), description="second")
        resumed = list(scope.resumed)
    return {"first": first.state_dict(), "second": second.state_dict(), "noise": noise,
            "history": [h["train_loss"] for h in first_history + second_history], "resumed": resumed}


def _assert_identical(a: dict, b: dict) -> None:
    for model in ("first", "second"):
        assert a[model].keys() == b[model].keys()
        for name in a[model]:
            assert torch.equal(a[model][name], b[model][name]), (model, name)
    assert torch.equal(a["noise"], b["noise"])
    assert a["history"] == b["history"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return _stage(tmp_path_factory.mktemp("plain"), _data())


@pytest.mark.parametrize("interrupt_at", [(1, 1), (1, 3), (2, 2)])
def test_interrupted_then_resumed_is_bit_identical(tmp_path, uninterrupted, interrupt_at):
    train = _data()
    with pytest.raises(Interrupted):
        _stage(tmp_path, train, interrupt_at)
    assert (tmp_path / "probe").is_dir()  # kept for the next run
    resumed = _stage(tmp_path, train)
    _assert_identical(uninterrupted, resumed)
    fit_number, epoch = interrupt_at
    if fit_number == 1:
        assert resumed["resumed"] == [f"first after epoch {epoch}/3"]
    else:  # the finished first fit is skipped whole, the second picks up after its epoch
        assert resumed["resumed"] == ["first after epoch 3/3", f"second after epoch {epoch}/3"]
    assert not (tmp_path / "probe").exists()  # a stage that succeeds removes its checkpoints


def test_checkpoint_from_other_data_or_config_is_not_resumed(tmp_path, uninterrupted, capsys):
    with pytest.raises(Interrupted):
        _stage(tmp_path, _data(seed=2), (1, 2))  # other data
    fresh = _stage(tmp_path, _data())
    assert fresh["resumed"] == []
    assert "is from other params, data or code; starting this fit clean" in capsys.readouterr().err
    _assert_identical(uninterrupted, fresh)

    with pytest.raises(Interrupted):
        _stage(tmp_path, _data(), (1, 2), FitConfig(epochs=3, batch_size=64, lr=0.01))  # other lr
    assert _stage(tmp_path, _data())["resumed"] == []


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_checkpoint_that_carries_code_is_refused_and_never_run(tmp_path, container):
    marker = tmp_path / "pwned"
    slot = tmp_path / "probe" / "01-first.pt"
    slot.parent.mkdir(parents=True)
    planted = {"fingerprint": "x", "model": TouchesMarker(marker)}
    if container == "torch.save":  # torch's zip format, as a real checkpoint
        torch.save(planted, slot)
    else:
        slot.write_bytes(pickle.dumps(planted))
    with pytest.raises(ArtifactError, match=r"01-first.pt is not a plain-tensor checkpoint and was refused "
                                            r"without running it .*delete .*probe to start the stage clean"):
        _stage(tmp_path, _data(size=128))
    assert not marker.exists()


def test_torn_checkpoint_starts_the_fit_clean(tmp_path, uninterrupted, capsys):
    with pytest.raises(Interrupted):
        _stage(tmp_path, _data(), (1, 2))
    slot = tmp_path / "probe" / "01-first.pt"
    slot.write_bytes(slot.read_bytes()[:100])  # as a crash of the machine mid-write might leave it
    fresh = _stage(tmp_path, _data())
    assert fresh["resumed"] == [] and "01-first.pt is unreadable" in capsys.readouterr().err
    _assert_identical(uninterrupted, fresh)


def test_checkpoint_from_other_params_or_code_is_not_resumed(tmp_path, monkeypatch):
    with pytest.raises(Interrupted):
        _stage(tmp_path, _data(size=128), (1, 2), digest="other-params")
    assert _stage(tmp_path, _data(size=128))["resumed"] == []

    with pytest.raises(Interrupted):
        _stage(tmp_path, _data(size=128), (1, 2))
    monkeypatch.setattr(checkpoints, "code_version", lambda: "edited training loop")
    assert _stage(tmp_path, _data(size=128))["resumed"] == []


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "metrics.json"
    prefix = temp_prefix(target).rsplit(".", 2)[0]  # ".metrics.json.<host>"
    dead = tmp_path / f"{prefix}.999999999.abc.tmp"  # this host, no such pid
    dead.write_text("half")
    dead_staging = tmp_path / f"{prefix}.999999998.def.tmp"  # a model directory's staging folder
    dead_staging.mkdir()
    live = tmp_path / f"{prefix}.{os.getpid()}.ghi.tmp"  # a writer still running
    live.write_text("busy")
    other_host = tmp_path / ".metrics.json.elsewhere.999999999.jkl.tmp"  # its pids mean nothing here
    other_host.write_text("theirs")
    sibling = tmp_path / f".metrics.json.bak.{prefix.rsplit('.', 1)[1]}.999999999.mno.tmp"  # another file's
    sibling.write_text("not ours")
    write_json(target, {"a": 1})
    assert not dead.exists() and not dead_staging.exists()
    assert live.exists() and other_host.exists() and sibling.exists()
    assert json.loads(target.read_text()) == {"a": 1}


def test_checkpoint_of_another_frozen_depth_is_not_resumed(tmp_path):
    # `freeze_layers: auto` picks the depth at run time, and freezing leaves the weights as they are.
    with pytest.raises(Interrupted):
        _stage(tmp_path, _data(size=128), (1, 2), frozen=2)
    assert _stage(tmp_path, _data(size=128), frozen=3)["resumed"] == []
    with pytest.raises(Interrupted):
        _stage(tmp_path, _data(size=128), (1, 2), frozen=3)
    assert _stage(tmp_path, _data(size=128), frozen=3)["resumed"] == ["first after epoch 2/3"]
