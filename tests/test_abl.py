"""ABL, the baseline: its held loss, its gradient-ascent unlearning, and its isolation end to end."""

from __future__ import annotations

import pytest
import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.abl import gradient_ascent, held_loss, run_abl
from ptdefense.metrics import isolation_metrics
from ptdefense.models.registry import build_model
from ptdefense.params import AblParams
from ptdefense.training import FitConfig, fit, per_sample_loss

CPU = torch.device("cpu")


def _gradient(objective, value: float) -> tuple[float, float]:
    loss = torch.tensor(value, requires_grad=True)
    out = objective(loss)
    out.backward()
    return float(out.detach()), float(loss.grad)


@pytest.mark.parametrize("kind", ["lga", "flooding"])
def test_held_loss_descends_above_gamma_and_ascends_below(kind):
    objective = held_loss(kind, gamma=0.5)
    assert _gradient(objective, 2.0)[1] == pytest.approx(1.0)
    assert _gradient(objective, 0.1)[1] == pytest.approx(-1.0)


def test_held_loss_values():
    assert _gradient(held_loss("flooding", 0.5), 0.1)[0] == pytest.approx(0.9)  # |0.1 − 0.5| + 0.5
    assert _gradient(held_loss("flooding", 0.5), 2.0)[0] == pytest.approx(2.0)
    assert _gradient(held_loss("lga", 0.5), 0.1)[0] == pytest.approx(-0.1)  # sign(0.1 − 0.5) · 0.1
    with pytest.raises(ValueError, match="lga, flooding"):
        held_loss("plain", 0.5)


def _backdoored_noise(count: int = 640, poison_every: int = 10, seed: int = 0) -> tuple[ImageSet, torch.Tensor]:
    """Random images with random labels (nothing to learn) plus every 10th carrying a white 8×8
    corner patch and label 0 (a trigger learned in a few steps)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 200, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(1, 10, (count,), generator=generator)
    poison = torch.arange(0, count, poison_every)
    images[poison, :, -8:, -8:] = 255
    labels[poison] = 0
    return ImageSet(images, labels), poison


def _abl_settings(**overrides) -> AblParams:
    """params.abl through its schema, so that a field the stage passes and the test forgot fails here."""
    settings = dict(loss="lga", gamma=0.5, isolation_epochs=3, isolation_ratio=0.05, retrain_epochs=1,
                    unlearn_epochs=1, unlearn_lr=5e-4, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4,
                    precision="fp32", min_steps=0)
    settings.update(overrides)
    return AblParams(**settings)


def test_abl_isolates_its_ratio_of_lowest_loss_samples_and_they_are_poison():
    data, poison = _backdoored_noise()
    torch.manual_seed(0)
    model = build_model("resnet_small", 1, 10, 8)
    result = run_abl(model, data, _abl_settings(), CPU, seed=0)
    assert result.isolated.numel() == 32  # 5% of 640
    assert torch.equal(result.isolated, torch.sort(result.isolated).values)
    # The isolated samples are the lowest-loss ones under the isolation model.
    threshold = result.isolation_losses[result.isolated].max()
    outside = torch.ones(640, dtype=torch.bool)
    outside[result.isolated] = False
    assert bool((result.isolation_losses[outside] >= threshold).all())
    scores = isolation_metrics(result.isolated, poison, len(data))
    assert scores["isolation_precision"] >= 0.9
    # isolation 3 × 640, retrain 1 × 608, unlearn 1 × 32
    assert result.sample_epochs == 3 * 640 + 608 + 32
    assert [len(result.history[phase]) for phase in ("isolation", "retrain", "unlearn")] == [3, 1, 1]


def test_abl_without_unlearning_skips_the_phase():
    data, _ = _backdoored_noise(count=128)
    torch.manual_seed(0)
    result = run_abl(build_model("resnet_small", 1, 10, 4), data,
                     _abl_settings(isolation_epochs=1, unlearn_epochs=0), CPU, seed=0)
    assert result.history["unlearn"] == []
    assert result.sample_epochs == 128 + (128 - 6)


def test_gradient_ascent_raises_the_loss_of_the_samples_it_unlearns():
    data, poison = _backdoored_noise()
    torch.manual_seed(0)
    model = build_model("resnet_small", 1, 10, 8)
    fit(model, data, FitConfig(epochs=3, batch_size=32, lr=0.05, precision="fp32"), CPU, seed=0)
    suspects = data.subset(poison)
    before = float(per_sample_loss(model, suspects, CPU).mean())
    fit(model, suspects, FitConfig(epochs=2, batch_size=32, lr=0.01, precision="fp32"), CPU, seed=1,
        objective=gradient_ascent)
    after = float(per_sample_loss(model, suspects, CPU).mean())
    assert after > before + 0.5
