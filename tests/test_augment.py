"""Augmentation (augment.py) and the learning-rate schedules that BackdoorBench's recipe uses."""

from __future__ import annotations

import pytest
import torch

from ptdefense.augment import CROP_PADDING, augment_batch
from ptdefense.data.dataset import ImageSet
from ptdefense.models.registry import build_model
from ptdefense.training import FitConfig, fit, learning_rate_schedule

CPU = torch.device("cpu")


def images(count: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (count, 3, 12, 12), dtype=torch.uint8, generator=generator)  # no zeros: padding shows


def test_none_returns_the_batch_itself():
    batch = images()
    assert augment_batch(batch, "none", torch.Generator().manual_seed(0)) is batch


def test_crop_flip_is_a_shifted_crop_of_the_zero_padded_image_or_its_mirror():
    batch = images(32)
    out = augment_batch(batch, "crop_flip", torch.Generator().manual_seed(3))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(batch, [CROP_PADDING] * 4)
    span = 2 * CROP_PADDING + 1
    shifts, flips = set(), 0
    for index in range(len(batch)):
        matches = [(top, left, flip) for top in range(span) for left in range(span) for flip in (False, True)
                   if torch.equal(out[index], (lambda crop: crop.flip(-1) if flip else crop)(
                       padded[index, :, top:top + 12, left:left + 12]))]
        assert matches, index
        shifts.add(matches[0][:2])
        flips += matches[0][2]
    assert len(shifts) > 5 and 0 < flips < len(batch)  # offsets and flips vary from sample to sample
    assert torch.equal(batch, images(32))  # the input is left untouched


def test_crop_flip_follows_the_generator():
    batch = images()
    first = augment_batch(batch, "crop_flip", torch.Generator().manual_seed(5))
    again = augment_batch(batch, "crop_flip", torch.Generator().manual_seed(5))
    other = augment_batch(batch, "crop_flip", torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_unknown_augmentation_names_the_valid_ones():
    with pytest.raises(ValueError, match="none, crop_flip"):
        augment_batch(images(), "cutout", torch.Generator())


def _fit(config: FitConfig, seed: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (64,), generator=generator))
    torch.manual_seed(0)
    model = build_model("preact_resnet18", 3, 10, 4)
    fit(model, data, config, CPU, seed)
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_augmented_training_is_reproducible_and_differs_from_plain_training():
    recipe = FitConfig(epochs=2, batch_size=16, lr=0.01, precision="fp32", schedule="cosine", augment="crop_flip")
    first, again = _fit(recipe), _fit(recipe)
    plain = _fit(FitConfig(epochs=2, batch_size=16, lr=0.01, precision="fp32", schedule="cosine"))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], plain[key]) for key in first)


def learning_rates(config: FitConfig, steps: int) -> tuple[list[float], float]:
    """The rate at each of `steps` optimiser steps under config's schedule, and the rate after them."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = learning_rate_schedule(optimizer, config, total_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates, optimizer.param_groups[0]["lr"]


def test_cosine_starts_at_lr_and_anneals_to_zero_without_warm_up():
    rates, final = learning_rates(FitConfig(epochs=1, batch_size=1, lr=0.01, schedule="cosine"), 10)
    assert rates[0] == pytest.approx(0.01) and rates == sorted(rates, reverse=True)
    assert final == pytest.approx(0.0, abs=1e-12)


def test_one_cycle_warms_up_first():
    rates, _ = learning_rates(FitConfig(epochs=1, batch_size=1, lr=0.01), 20)
    assert rates[0] < 0.01 / 5 and max(rates) == pytest.approx(0.01, rel=0.05)


def test_unknown_schedule_names_the_valid_ones():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="one_cycle, cosine"):
        learning_rate_schedule(optimizer, FitConfig(epochs=1, batch_size=1, lr=0.1, schedule="step"), 10)
