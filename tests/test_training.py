"""The shared training loop: reproducible, honest about what it trains, and its loss helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptdefense.data.dataset import ImageSet
from ptdefense.models.registry import build_model
from ptdefense.training import (FitConfig, fit, per_sample_loss, predict, predict_logits, suppression_loss,
                                to_input)

CPU = torch.device("cpu")
CONFIG = FitConfig(epochs=2, batch_size=32, lr=0.1, precision="fp32")


def random_set(n: int = 96, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (n,), dtype=torch.int64, generator=generator))


def fresh_model(width: int = 4):
    torch.manual_seed(0)
    return build_model("resnet_small", 1, 10, width)


def state(model) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


# --- determinism --------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_bit_identical(precision):
    data = random_set()
    config = FitConfig(epochs=2, batch_size=32, lr=0.1, precision=precision)
    a, b = fresh_model(), fresh_model()
    history_a = fit(a, data, config, CPU, seed=7)
    history_b = fit(b, data, config, CPU, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [h["train_loss"] for h in history_a] == [h["train_loss"] for h in history_b]
    assert [h["train_accuracy"] for h in history_a] == [h["train_accuracy"] for h in history_b]


def test_different_seed_different_weights():
    data = random_set()
    a, b = fresh_model(), fresh_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    fit(a, data, CONFIG, CPU, seed=1)
    fit(b, data, CONFIG, CPU, seed=2)
    assert not torch.equal(a.blocks["head"][-1].weight, b.blocks["head"][-1].weight)


def test_fit_does_not_depend_on_global_rng():
    data = random_set()
    a, b = fresh_model(), fresh_model()
    torch.manual_seed(123)
    fit(a, data, CONFIG, CPU, seed=5)
    torch.manual_seed(456)
    fit(b, data, CONFIG, CPU, seed=5)
    assert torch.equal(a.blocks["head"][-1].weight, b.blocks["head"][-1].weight)


# --- fit ----------------------------------------------------------------------------------------

def test_history_and_callback():
    data = random_set(70)
    seen = []
    history = fit(fresh_model(), data, FitConfig(epochs=3, batch_size=32, lr=0.05, precision="fp32"), CPU, seed=0,
                  on_epoch_end=lambda epoch, stats: seen.append((epoch, dict(stats))))
    assert len(history) == 3
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert [stats for _, stats in seen] == history
    for stats in history:
        assert math.isfinite(stats["train_loss"]) and stats["train_loss"] > 0
        assert 0.0 <= stats["train_accuracy"] <= 1.0
        assert "suppression_loss" not in stats


def test_fit_learns_a_tiny_separable_problem():
    """Two classes, told apart by brightness: a few epochs must fit them."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.where(labels[:, None, None, None] == 1, 200, 30).to(torch.uint8).expand(64, 1, 28, 28).clone()
    images = (images.int() + torch.randint(-20, 20, images.shape, generator=generator)).clamp(0, 255).to(torch.uint8)
    data = ImageSet(images, labels)
    model = fresh_model()
    history = fit(model, data, FitConfig(epochs=4, batch_size=16, lr=0.05, precision="fp32"), CPU, seed=0)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert float((predict(model, images, CPU) == labels).float().mean()) >= 0.95


def test_fit_without_trainable_parameters():
    model = fresh_model()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        fit(model, random_set(16), CONFIG, CPU, seed=0)


def test_fit_only_trains_trainable_parameters():
    model = fresh_model()
    model.blocks["head"].requires_grad_(False)
    head_before = state(model.blocks["head"])
    stem_before = state(model.blocks["stem"])
    fit(model, random_set(64), CONFIG, CPU, seed=0)
    for key, value in head_before.items():
        assert torch.equal(model.blocks["head"].state_dict()[key], value), key  # no weight decay either
    assert not torch.equal(model.blocks["stem"][0].weight, stem_before["0.weight"])


def test_suppression_branch_reports_its_loss():
    data, suspects = random_set(64, seed=0), random_set(8, seed=1)
    history = fit(fresh_model(), data, CONFIG, CPU, seed=0, suppress=suspects, suppress_weight=1.0)
    for stats in history:
        assert "suppression_loss" in stats
        assert math.isfinite(stats["suppression_loss"]) and stats["suppression_loss"] > 0


# --- losses and inference -----------------------------------------------------------------------

def test_to_input_range_and_layout():
    images = torch.tensor([0, 255, 127], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    out = to_input(images, CPU)
    assert out.dtype == torch.float32
    assert out.shape == images.shape
    assert bool((out[:, 0] == -1.0).all()) and bool((out[:, 1] == 1.0).all())
    assert float(out[0, 2, 0, 0]) == pytest.approx(127 / 127.5 - 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert images[0, 1, 0, 0] == 255  # the uint8 input is untouched


def test_per_sample_loss_matches_cross_entropy_in_eval_mode():
    data = random_set(40)
    model = fresh_model()
    fit(model, data, FitConfig(epochs=1, batch_size=16, lr=0.05, precision="fp32"), CPU, seed=0)
    model.train()
    before = state(model)
    losses = per_sample_loss(model, data, CPU)
    assert losses.shape == (40,)
    assert losses.dtype == torch.float32
    # Inference does not touch BatchNorm statistics (eval mode).
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    model.eval()
    with torch.no_grad():
        logits = model(to_input(data.images, CPU))
    expected = F.cross_entropy(logits, data.labels, reduction="none")
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    # And in dataset order, independent of the inference batch size.
    torch.testing.assert_close(per_sample_loss(model, data, CPU, batch_size=7), expected, rtol=1e-5, atol=1e-5)


def test_predict_logits_empty_and_batched():
    model = fresh_model()
    data = random_set(10)
    assert predict_logits(model, data.images[:0], CPU).numel() == 0
    whole = predict_logits(model, data.images, CPU, batch_size=100)
    torch.testing.assert_close(predict_logits(model, data.images, CPU, batch_size=3), whole, rtol=1e-5, atol=1e-5)
    assert torch.equal(predict(model, data.images, CPU, batch_size=100), whole.argmax(1))


def test_suppression_loss_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    p = F.softmax(logits, dim=1)[torch.arange(2), labels]
    expected = -torch.log(1 - p).mean()
    assert float(suppression_loss(logits, labels)) == pytest.approx(float(expected), rel=1e-6)


def test_suppression_loss_finite_when_label_is_certain():
    logits = torch.tensor([[1000.0, -1000.0], [0.0, 50.0]], requires_grad=True)
    loss = suppression_loss(logits, torch.tensor([0, 1]))
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    assert bool(torch.isfinite(logits.grad).all())


def test_suppression_loss_bf16_logits():
    logits = torch.randn(4, 10).to(torch.bfloat16)
    loss = suppression_loss(logits, torch.tensor([0, 1, 2, 3]))
    assert loss.dtype == torch.float32
    assert math.isfinite(float(loss))


def test_optimizing_suppression_loss_lowers_p_label():
    torch.manual_seed(0)
    logits = torch.randn(8, 10)
    labels = torch.arange(8)
    logits[torch.arange(8), labels] += 3.0  # start confident in the label
    logits.requires_grad_(True)
    p_before = F.softmax(logits.detach(), dim=1)[torch.arange(8), labels]
    optimizer = torch.optim.SGD([logits], lr=8.0)  # the mean over 8 rows: lr 1 per row
    losses = []
    for _ in range(30):
        loss = suppression_loss(logits, labels)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    p_after = F.softmax(logits.detach(), dim=1)[torch.arange(8), labels]
    assert bool((p_after < p_before).all())
    assert bool((p_after < 0.5 * p_before).all())
    assert losses[-1] < losses[0]
    assert all(math.isfinite(x) for x in losses)
