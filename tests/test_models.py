"""Block models: shapes, freezing a prefix (truly frozen, BatchNorm statistics included), and disk I/O."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from payloads import TouchesMarker
from ptdefense.artifacts import ArtifactError
from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.pt import build_partial_model, recalibrate_batchnorm
from ptdefense.models.registry import build_model
from ptdefense.models.catalogue import model_names, num_blocks
from ptdefense.models.io import SPEC_FILE, WEIGHTS_FILE, load_model, save_model
from ptdefense.params import ParamsError, validate_params
from ptdefense.training import FitConfig, fit, predict_logits

CPU = torch.device("cpu")
BLOCKS = ["stem", "layer1", "layer2", "layer3", "head"]


def random_set(n: int = 256, seed: int = 0, shape=(1, 28, 28)) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (n,), dtype=torch.int64, generator=generator))


def small_model(in_channels: int = 1, width: int | None = 8, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("resnet_small", in_channels, 10, width)


def block_state(model, name: str) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.blocks[name].state_dict().items()}


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --- architecture -------------------------------------------------------------------------------

def test_registry():
    assert model_names() == ["preact_resnet18", "resnet18", "resnet_small", "vgg_small"]
    assert num_blocks("resnet_small") == 5
    assert num_blocks("resnet18") == 6
    assert num_blocks("preact_resnet18") == 6
    assert num_blocks("vgg_small") == 5
    with pytest.raises(ValueError, match="resnet_small"):
        num_blocks("vgg")
    with pytest.raises(ValueError, match="resnet_small"):
        build_model("vgg", 1, 10)


@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_forward_shapes(in_channels, size):
    model = build_model("resnet_small", in_channels, 10)
    assert model.block_names == BLOCKS
    assert len(model.block_names) == num_blocks("resnet_small")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, in_channels, size, size))
    assert out.shape == (3, 10)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_num_classes_and_width():
    model = build_model("resnet_small", 1, 7, width=4)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert model.blocks["stem"][0].out_channels == 4
    assert model.blocks["head"][-1].in_features == 16
    assert build_model("resnet_small", 1, 10).blocks["stem"][0].out_channels == 16  # default width


def test_resnet18_width():
    model = build_model("resnet18", 3, 10, width=8)
    assert model.blocks["stem"][0].out_channels == 8
    assert model.blocks["layer4"][1].conv2.out_channels == 64
    assert model.blocks["head"][-1].in_features == 64
    # Same structure as the default width: the same parameter and buffer names.
    default = build_model("resnet18", 3, 10)
    assert default.blocks["stem"][0].out_channels == 64
    assert default.blocks["head"][-1].in_features == 512
    assert list(model.state_dict()) == list(default.state_dict())


def test_resnet18_default_width_is_torchvision_resnet18():
    """The width-64 model is unchanged: torchvision's ResNet-18 stages, names and all (saved models load)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = build_model("resnet18", 3, 10)
    torch.manual_seed(0)
    reference = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    expected = {f"blocks.stem.{k}": v for k, v in stem.state_dict().items()}
    for stage in ["layer1", "layer2", "layer3", "layer4"]:
        expected.update({f"blocks.{stage}.{k}": v for k, v in getattr(reference, stage).state_dict().items()})
    expected.update({f"blocks.head.2.{k}": v for k, v in reference.fc.state_dict().items()})
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key  # same seed, same initial weights


def test_vgg_small_default_width():
    model = build_model("vgg_small", 3, 10)
    assert model.blocks["stage1"][0].out_channels == 32
    assert model.blocks["head"][-1].in_features == 256
    assert sum(1 for m in model.modules() if isinstance(m, nn.Conv2d)) == 6


def test_preact_resnet18_structure():
    model = build_model("preact_resnet18", 3, 10, width=8)
    assert isinstance(model.blocks["stem"], nn.Conv2d)  # pre-activation: no BN/ReLU after the stem conv
    assert isinstance(model.blocks["head"][0], nn.BatchNorm2d)  # the final BN-ReLU lives in the head
    assert model.blocks["head"][0].num_features == 64
    assert build_model("preact_resnet18", 3, 10).blocks["stem"].out_channels == 64  # default width


# --- every registered model ---------------------------------------------------------------------

TEST_WIDTH = 8
EXPECTED_BLOCKS = {
    "resnet_small": ["stem", "layer1", "layer2", "layer3", "head"],
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "preact_resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "vgg_small": ["stage1", "stage2", "stage3", "stage4", "head"],
}


def test_expected_blocks_cover_the_registry():
    assert sorted(EXPECTED_BLOCKS) == model_names()


def make(name: str, in_channels: int = 3, num_classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, in_channels, num_classes, TEST_WIDTH)


@pytest.mark.parametrize("name", model_names())
def test_every_model_blocks(name):
    model = make(name)
    assert model.block_names == EXPECTED_BLOCKS[name]
    assert len(model.blocks) == num_blocks(name) == len(model.block_names)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 13, 17), (3, 8, 8)])
def test_every_model_forward_shapes(name, shape):
    model = make(name, in_channels=shape[0], num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for norm in batchnorms(module) for t in (norm.running_mean, norm.running_var)]


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("which", ["first", "all_but_head"])
def test_every_model_freeze_prefix(name, which):
    model = make(name)
    names = model.block_names
    count = 1 if which == "first" else num_blocks(name) - 1
    model.freeze_prefix(count)
    model.train()
    before = {block: block_state(model, block) for block in names}
    trainable_stats = _bn_stats(nn.ModuleList(model.blocks[block] for block in names[count:]))
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.randn(4, 3, 16, 16))
    out.logsumexp(dim=1).sum().backward()
    optimiser.step()
    for index, block in enumerate(names):
        parameters = list(model.blocks[block].parameters())
        assert parameters, block
        if index < count:
            assert all(not p.requires_grad and p.grad is None for p in parameters), block
            after = model.blocks[block].state_dict()
            for key, value in before[block].items():  # weights and BatchNorm statistics alike
                assert torch.equal(after[key], value), f"{block}.{key} changed although frozen"
            assert all(not norm.training for norm in batchnorms(model.blocks[block])), block
        else:
            assert all(p.requires_grad and p.grad is not None for p in parameters), block
    # The trainable blocks' BatchNorm statistics did move (train-mode forward).
    moved = _bn_stats(nn.ModuleList(model.blocks[block] for block in names[count:]))
    if trainable_stats:
        assert any(not torch.equal(a, b) for a, b in zip(moved, trainable_stats))


@pytest.mark.parametrize("name", model_names())
def test_every_model_freeze_too_large(name):
    blocks = num_blocks(name)
    model = make(name)
    for count in (blocks, blocks + 1, -1):
        with pytest.raises(ValueError) as info:
            model.freeze_prefix(count)
        assert f"0..{blocks - 1}" in str(info.value)
        assert all(block in str(info.value) for block in EXPECTED_BLOCKS[name])
    assert model.frozen_prefix == 0
    # The params file is checked against the same range.
    assert validate_params({"model": {"name": name}, "freeze_layers": blocks - 1}).freeze_layers == blocks - 1
    with pytest.raises(ParamsError, match=rf"0\.\.{blocks - 1}"):
        validate_params({"model": {"name": name}, "freeze_layers": blocks})


@pytest.mark.parametrize("name", model_names())
def test_every_model_save_load_roundtrip(tmp_path, name):
    model = make(name, in_channels=1, num_classes=5)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 28, 28) * 3 + 1)  # non-default BatchNorm statistics
    spec = {"architecture": name, "in_channels": 1, "num_classes": 5, "width": TEST_WIDTH}
    save_model(model, tmp_path / "m", spec)
    loaded, loaded_spec = load_model(tmp_path / "m", "train-backdoored")
    assert loaded_spec["block_names"] == EXPECTED_BLOCKS[name]
    images = torch.randn(3, 1, 28, 28)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    # A model of another seed gives other outputs: the comparison is not vacuous.
    other = make(name, in_channels=1, num_classes=5, seed=1).eval()
    with torch.no_grad():
        assert not torch.equal(other(images), loaded(images))


@pytest.mark.parametrize("count", [5, 6, -1])
def test_freeze_prefix_out_of_range(count):
    model = small_model()
    with pytest.raises(ValueError) as info:
        model.freeze_prefix(count)
    assert "0..4" in str(info.value)
    assert model.frozen_prefix == 0
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("count", [0, 1, 3, 4])
def test_freeze_prefix_sets_requires_grad_and_bn_mode(count):
    model = small_model()
    model.freeze_prefix(count)
    model.train()
    for index, name in enumerate(BLOCKS):
        block = model.blocks[name]
        frozen = index < count
        assert all(p.requires_grad is not frozen for p in block.parameters()), name
        for norm in batchnorms(block):
            assert norm.training is not frozen, name
    assert len(model.frozen_blocks()) == count


def test_unfreeze_after_freeze():
    model = small_model()
    model.freeze_prefix(3)
    model.freeze_prefix(0)
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(norm.training for norm in batchnorms(model))


def test_frozen_prefix_builds_no_graph():
    model = small_model()
    model.freeze_prefix(4)
    model.train()
    out = model(torch.randn(4, 1, 28, 28))
    out.sum().backward()
    for name in BLOCKS[:4]:
        assert all(p.grad is None for p in model.blocks[name].parameters()), name
    assert all(p.grad is not None for p in model.blocks["head"].parameters())


# --- freezing under real training ---------------------------------------------------------------

def test_fit_leaves_frozen_blocks_bit_identical():
    model = small_model(width=8)
    model.freeze_prefix(3)
    before = {name: block_state(model, name) for name in BLOCKS}
    history = fit(model, random_set(256), FitConfig(epochs=1, batch_size=64, lr=0.1, precision="fp32"), CPU, seed=0)
    assert len(history) == 1
    for name in BLOCKS[:3]:
        after = model.blocks[name].state_dict()
        assert after.keys() == before[name].keys()
        for key, tensor in before[name].items():
            assert torch.equal(after[key], tensor), f"{name}.{key} changed although frozen"
        # BatchNorm running statistics, too (the stem and layer1/2 all have them).
        assert any("running_mean" in key for key in after), name
    for name in BLOCKS[3:]:
        after = model.blocks[name].state_dict()
        weights = [key for key in after if key.endswith("weight")]
        assert weights
        assert any(not torch.equal(after[key], before[name][key]) for key in weights), f"{name} did not train"
    # The trainable block's BatchNorm statistics moved (it is in training mode).
    layer3 = model.blocks["layer3"].state_dict()
    assert not torch.equal(layer3["bn1.running_mean"], before["layer3"]["bn1.running_mean"])


def test_build_partial_model_recalibrates_then_freezes():
    data = random_set(128)
    model = build_partial_model("resnet_small", 1, 10, 8, freeze_layers=2, frozen_bn="recalibrate",
                                train_images=data.images, device=CPU, seed=0)
    assert model.frozen_prefix == 2
    stem_bn = model.blocks["stem"][1]
    assert not torch.allclose(stem_bn.running_mean, torch.zeros_like(stem_bn.running_mean))
    initial = build_partial_model("resnet_small", 1, 10, 8, freeze_layers=2, frozen_bn="initial",
                                  train_images=data.images, device=CPU, seed=0)
    stem_bn = initial.blocks["stem"][1]
    assert torch.equal(stem_bn.running_mean, torch.zeros_like(stem_bn.running_mean))
    assert torch.equal(stem_bn.running_var, torch.ones_like(stem_bn.running_var))
    # Same seed, same random initialisation of the weights either way.
    assert torch.equal(model.blocks["stem"][0].weight, initial.blocks["stem"][0].weight)


# --- BatchNorm recalibration --------------------------------------------------------------------

def test_recalibrate_batchnorm_changes_running_stats():
    model = small_model(width=8)
    norms = batchnorms(model)
    assert norms
    for norm in norms:
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
    momenta = [norm.momentum for norm in norms]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model.eval()
    recalibrate_batchnorm(model, random_set(96).images, CPU, seed=0, sample_count=64, batch_size=32)
    for norm in norms:
        assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
        assert bool(torch.isfinite(norm.running_var).all()) and bool((norm.running_var > 0).all())
    assert [norm.momentum for norm in norms] == momenta  # restored
    assert model.training is False  # mode restored
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key  # only statistics change


def test_recalibrate_batchnorm_matches_data_statistics():
    """The stem's BatchNorm mean equals the conv output's mean over the sampled images."""
    model = small_model(width=8)
    images = random_set(64).images
    recalibrate_batchnorm(model, images, CPU, seed=0, sample_count=64, batch_size=64)
    from ptdefense.training import to_input

    with torch.no_grad():
        conv_out = model.blocks["stem"][0](to_input(images, CPU))
    expected = conv_out.mean(dim=(0, 2, 3))
    assert torch.allclose(model.blocks["stem"][1].running_mean, expected, atol=1e-5)


def test_recalibrate_keeps_frozen_prefix():
    model = small_model(width=8)
    model.freeze_prefix(2)
    model.train()
    recalibrate_batchnorm(model, random_set(32).images, CPU, seed=0, sample_count=32, batch_size=16)
    assert model.frozen_prefix == 2
    assert model.training is True
    assert all(not norm.training for name in BLOCKS[:2] for norm in batchnorms(model.blocks[name]))


# --- disk I/O -----------------------------------------------------------------------------------

SPEC = {"architecture": "resnet_small", "in_channels": 1, "num_classes": 10, "width": 8}


def trained_model():
    model = small_model(width=8)
    fit(model, random_set(64), FitConfig(epochs=1, batch_size=32, lr=0.1, precision="fp32"), CPU, seed=0)
    return model


def test_save_load_roundtrip(tmp_path):
    model = trained_model()
    directory = tmp_path / "models" / "m"
    save_model(model, directory, {**SPEC, "stage": "test"})
    assert sorted(p.name for p in directory.iterdir()) == sorted([SPEC_FILE, WEIGHTS_FILE])
    assert [p.name for p in directory.parent.iterdir()] == ["m"]  # no staging directory left
    loaded, spec = load_model(directory, "train-backdoored")
    assert spec["stage"] == "test"
    assert spec["block_names"] == BLOCKS
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key].cpu(), restored[key]), key
    # Identical outputs through the pipeline's inference path (both models in the same memory format:
    # `fit` leaves the trained one channels_last, which changes conv rounding, not the weights).
    images = random_set(16, seed=3).images
    assert torch.equal(predict_logits(model, images, CPU), predict_logits(loaded, images, CPU))


def test_save_model_replaces_existing_directory(tmp_path):
    directory = tmp_path / "m"
    save_model(small_model(width=8, seed=1), directory, SPEC)
    (directory / "stale.txt").write_text("old")
    second = small_model(width=8, seed=2)
    save_model(second, directory, SPEC)
    assert not (directory / "stale.txt").exists()
    loaded, _ = load_model(directory, "x")
    assert torch.equal(loaded.blocks["stem"][0].weight, second.blocks["stem"][0].weight)


def test_load_missing_directory(tmp_path):
    directory = tmp_path / "nothing-here"
    with pytest.raises(ArtifactError) as info:
        load_model(directory, "partial-train")
    assert str(directory) in str(info.value)
    assert "partial-train" in str(info.value)


def test_load_missing_weights(tmp_path):
    directory = tmp_path / "m"
    save_model(small_model(), directory, SPEC)
    (directory / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="partial-train"):
        load_model(directory, "partial-train")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_load_corrupted_weights(tmp_path, damage):
    directory = tmp_path / "m"
    save_model(small_model(), directory, SPEC)
    weights = directory / WEIGHTS_FILE
    content = weights.read_bytes()
    weights.write_bytes({"garbage": b"\x07" * 200, "truncated": content[: len(content) // 2], "empty": b""}[damage])
    with pytest.raises(ArtifactError) as info:
        load_model(directory, "finetune")
    assert str(directory) in str(info.value)
    assert "finetune" in str(info.value)


def test_load_weights_of_another_architecture(tmp_path):
    directory = tmp_path / "m"
    save_model(small_model(width=8), directory, SPEC)
    spec = json.loads((directory / SPEC_FILE).read_text())
    spec["width"] = 16  # the weights no longer fit the rebuilt model
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match=str(directory)):
        load_model(directory, "finetune")


@pytest.mark.parametrize("spec_text", ["{not json", json.dumps({"architecture": "resnet_small"}),
                                       json.dumps({**SPEC, "architecture": "vgg"})])
def test_load_bad_spec(tmp_path, spec_text):
    directory = tmp_path / "m"
    save_model(small_model(), directory, SPEC)
    (directory / SPEC_FILE).write_text(spec_text)
    with pytest.raises(ArtifactError, match=str(directory)):
        load_model(directory, "finetune")


def test_weights_file_that_is_a_code_carrying_pickle_is_refused_unrun(tmp_path):
    """A model directory whose weights were swapped for a pickle (say, a torch.save file that
    runs a command when unpickled): load_model reads safetensors only, so it is refused."""
    directory = tmp_path / "m"
    save_model(small_model(), directory, SPEC)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": TouchesMarker(marker)}, directory / WEIGHTS_FILE)
    with pytest.raises(ArtifactError, match=str(directory)):
        load_model(directory, "finetune")
    assert not marker.exists()


def test_narrow_models_train_without_onednn_on_cpus_without_avx512(monkeypatch):
    """oneDNN's AVX2 convolution backward corrupts the heap at widths 4-5 (models/registry.py)."""
    import torch

    from ptdefense.models import registry

    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    registry.build_model("resnet_small", 1, 10, 4)
    assert torch.backends.mkldnn.enabled  # AVX-512: oneDNN kept
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    registry.build_model("resnet_small", 3, 10, 16)
    assert torch.backends.mkldnn.enabled  # wide enough (the 3-channel input does not count)
    registry.build_model("resnet_small", 1, 10, 4)
    assert not torch.backends.mkldnn.enabled
