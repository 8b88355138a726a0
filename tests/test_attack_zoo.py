"""Every registered attack: determinism, exact victim counts, labels, untouched bystanders, pixel range.

Plus what is specific to each trigger (the blend formula, the sinusoid, the warp, the diamond, PGD's
budget). BadNets' own details are in test_attacks.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from ptdefense.attacks.registry import attack_class, attack_names, build_attack
from ptdefense.data.dataset import ImageSet
from ptdefense.models.registry import build_model

ALL = ["badnets", "badnets_all2all", "blend", "label_consistent", "sig", "trojan", "wanet"]
# Cheap settings for the one attack that trains a model (its surrogate) before poisoning.
FAST = {"label_consistent": {"surrogate_epochs": 1, "pgd_steps": 3}}


def make_set(n: int = 240, shape=(1, 16, 16), num_classes: int = 10, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % num_classes  # balanced: n / num_classes per class
    return ImageSet(images, labels[torch.randperm(n, generator=generator)])


def attack(name: str, rate: float | None = 0.05, seed: int = 0, target: int = 2, **settings):
    return build_attack(name, 10, rate, target, seed, {**FAST.get(name, {}), **settings})


def test_registry_lists_every_attack():
    assert attack_names() == sorted([*ALL, "none"])  # "none": the scanning workflow, tested below


def test_none_takes_the_training_set_as_it_is():
    data = make_set()
    result = attack("none", rate=0.2, target=99).poison(data)  # rate and target are ignored
    assert result.poison_indices.numel() == 0 and result.cross_indices.numel() == 0
    assert torch.equal(result.data.images, data.images) and torch.equal(result.data.labels, data.labels)
    triggered = attack("none").triggered_test(make_set(50, seed=9))
    assert len(triggered.data) == 0 and triggered.attack_targets.numel() == 0
    assert triggered.data.image_shape == (1, 16, 16)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_poison(name):
    data = make_set()
    first, second = attack(name, seed=4).poison(data), attack(name, seed=4).poison(data)
    assert torch.equal(first.poison_indices, second.poison_indices)
    assert torch.equal(first.cross_indices, second.cross_indices)
    assert torch.equal(first.data.images, second.data.images)
    assert torch.equal(first.data.labels, second.data.labels)
    test = make_set(50, seed=9)
    assert torch.equal(attack(name, seed=4).triggered_test(test).data.images,
                       attack(name, seed=4).triggered_test(test).data.images)


@pytest.mark.parametrize("name", ALL)
def test_other_seed_other_victims(name):
    data = make_set()
    assert not torch.equal(attack(name, seed=1).poison(data).poison_indices,
                           attack(name, seed=2).poison(data).poison_indices)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("rate", [0.01, 0.03, 0.05])
def test_exact_poison_count(name, rate):
    data = make_set()
    result = attack(name, rate).poison(data)
    assert result.poison_indices.numel() == round(rate * len(data))
    assert torch.unique(result.poison_indices).numel() == result.poison_indices.numel()
    assert torch.equal(result.poison_indices, torch.sort(result.poison_indices).values)


@pytest.mark.parametrize("name", ALL)
def test_standard_rate(name):
    data = make_set()
    result = attack(name, None).poison(data)
    if attack_class(name).clean_label:
        # Half of the target class (24 images of class 2 here).
        assert result.poison_indices.numel() == 12
    else:
        assert result.poison_indices.numel() == 24


@pytest.mark.parametrize("name", ALL)
def test_labels_change_only_where_the_attack_says(name):
    data = make_set()
    chosen = attack(name)
    result = chosen.poison(data)
    victims = torch.zeros(len(data), dtype=torch.bool)
    victims[result.poison_indices] = True
    assert torch.equal(result.data.labels[~victims], data.labels[~victims])
    if chosen.clean_label:
        assert torch.equal(result.data.labels, data.labels)
        assert bool((data.labels[victims] == 2).all())  # only target-class images are poisoned
    else:
        wanted = chosen.attack_targets(data.labels[victims])
        assert torch.equal(result.data.labels[victims], wanted)
        assert bool((wanted != data.labels[victims]).all())  # every victim's label really changes


@pytest.mark.parametrize("name", ALL)
def test_bystanders_are_byte_identical(name):
    data = make_set()
    original = data.images.clone()
    result = attack(name).poison(data)
    touched = torch.zeros(len(data), dtype=torch.bool)
    touched[result.poison_indices] = True
    touched[result.cross_indices] = True
    assert torch.equal(result.data.images[~touched], original[~touched])
    assert torch.equal(data.images, original)  # the input set itself is never modified
    # And the trigger is really there: every victim differs from its clean image.
    victims = result.poison_indices
    assert bool((result.data.images[victims] != original[victims]).flatten(1).any(1).all())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 20)])
def test_dtype_shape_and_range_kept(name, shape):
    chosen = attack(name)
    for fill in (0, 255):
        images = torch.full((4, *shape), fill, dtype=torch.uint8)
        triggered = chosen.apply_trigger(images)
        assert triggered.dtype == torch.uint8 and triggered.shape == images.shape
        assert torch.equal(images, torch.full_like(images, fill))  # pure: the input is untouched
    # Saturated images must clip, not wrap around: a sinusoid or a blend on white stays bright.
    bright = chosen.apply_trigger(torch.full((2, *shape), 250, dtype=torch.uint8)).float()
    dark = chosen.apply_trigger(torch.full((2, *shape), 5, dtype=torch.uint8)).float()
    # How far each trigger may move a pixel: blend by α·255, the sinusoid by Δ; patches are free to.
    reach = {"blend": 0.2 * 255 + 1, "sig": 21, "wanet": 0}.get(name)
    if reach is not None:
        assert float(bright.min()) >= 250 - reach
        assert float(dark.max()) <= 5 + reach


@pytest.mark.parametrize("name", ALL)
def test_triggered_test_set_and_targets(name):
    test = make_set(100, seed=3)
    chosen = attack(name)
    triggered = chosen.triggered_test(test)
    if name == "badnets_all2all":
        assert len(triggered.data) == len(test)  # every class is a victim of an all-to-all attack
        assert torch.equal(triggered.attack_targets, (triggered.data.labels + 1) % 10)
    else:
        assert len(triggered.data) == int((test.labels != 2).sum())  # target-class images dropped
        assert bool((triggered.attack_targets == 2).all())
        assert bool((triggered.data.labels != 2).all())


def test_all_to_all_relabels_to_the_next_class():
    data = make_set()
    result = attack("badnets_all2all", 0.1).poison(data)
    victims = result.poison_indices
    assert torch.equal(result.data.labels[victims], (data.labels[victims] + 1) % 10)
    assert torch.unique(data.labels[victims]).numel() > 1  # victims come from many classes


def test_blend_formula_and_fixed_pattern():
    chosen = attack("blend", alpha=0.25)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pattern = chosen.pattern((1, 8, 8))
    expected = (0.75 * images.float() + 0.25 * pattern.float()).round().to(torch.uint8)
    assert torch.equal(chosen.apply_trigger(images), expected)
    # One pattern for every image and every call; another seed draws another pattern.
    assert torch.equal(chosen.pattern((1, 8, 8)), pattern)
    assert not torch.equal(attack("blend", seed=1).pattern((1, 8, 8)), pattern)


def test_sig_adds_a_horizontal_sinusoid():
    chosen = attack("sig", delta=20.0, frequency=6.0)
    images = torch.full((2, 1, 5, 24), 128, dtype=torch.uint8)
    difference = chosen.apply_trigger(images).float() - 128
    expected = torch.tensor([round(20 * math.sin(2 * math.pi * j * 6 / 24)) for j in range(24)], dtype=torch.float)
    assert torch.equal(difference[0, 0, 0], expected)
    assert bool((difference == difference[:, :, :1, :]).all())  # the same in every row: horizontal


def test_trojan_pattern_is_a_fixed_non_square_diamond():
    chosen = attack("trojan", size=5, margin=1)
    images = torch.full((2, 1, 16, 16), 128, dtype=torch.uint8)
    changed = (chosen.apply_trigger(images) != images)[0, 0]
    mask = chosen.mask()
    assert int(mask.sum()) == 13  # a 5 × 5 diamond: corners cut, so not a square
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[10:15, 10:15] = mask
    assert not bool(changed[~box].any())  # nothing changes outside the diamond
    assert int(changed.sum()) >= 11  # pattern levels are far from mid-grey
    assert torch.equal(chosen.apply_trigger(images)[0], chosen.apply_trigger(images)[1])


def test_wanet_warp_and_noise_mode():
    data = make_set(200, shape=(1, 28, 28))
    chosen = attack("wanet", 0.05, cross_ratio=2.0)
    result = chosen.poison(data)
    assert result.cross_indices.numel() == 2 * result.poison_indices.numel()
    assert not bool(torch.isin(result.cross_indices, result.poison_indices).any())
    assert torch.equal(result.data.labels[result.cross_indices], data.labels[result.cross_indices])
    # A vanishing warp leaves images as they were; the standard one moves pixels, but only a little.
    smooth = torch.arange(28, dtype=torch.float).repeat(28, 1)[None, None].mul(9).to(torch.uint8)
    assert torch.equal(attack("wanet", s=1e-6).apply_trigger(smooth), smooth)
    moved = (chosen.apply_trigger(smooth).float() - smooth.float()).abs()
    assert float(moved.max()) > 0 and float(moved.mean()) < 9  # under one pixel's step on average


def test_label_consistent_perturbation_stays_within_epsilon():
    data = make_set(200, shape=(1, 12, 12))
    chosen = attack("label_consistent", 0.05, epsilon=8.0, patch_size=3)
    result = chosen.poison(data)
    victims = result.poison_indices
    difference = (result.data.images[victims].float() - data.images[victims].float()).abs()
    outside_patch = torch.ones(12, 12, dtype=torch.bool)
    for rows in (slice(0, 3), slice(-3, None)):
        for columns in (slice(0, 3), slice(-3, None)):
            outside_patch[rows, columns] = False
    assert float(difference[..., outside_patch].max()) <= 8.0
    assert float(difference[..., outside_patch].max()) > 0  # PGD did move the images
    corners = result.data.images[victims][..., ~outside_patch]
    assert set(corners.unique().tolist()) == {0, 255}  # the checkerboards, black and white
    assert int((corners == 255).sum()) == 5 * 4 * victims.numel()  # 5 white squares per 3 × 3 board


def test_pgd_makes_images_harder_for_the_model():
    from ptdefense.attacks.label_consistent import adversarial_perturbation

    torch.manual_seed(0)
    model = build_model("resnet_small", 1, 10).eval()
    data = make_set(32, shape=(1, 16, 16))
    hard = adversarial_perturbation(model, data.images, data.labels, 16.0, 5, 4.0, torch.device("cpu"))
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model(data.images.float() / 127.5 - 1), data.labels)
        after = torch.nn.functional.cross_entropy(model(hard.float() / 127.5 - 1), data.labels)
    assert float(after) > float(before)


def test_clean_label_rate_beyond_the_target_class_fails():
    with pytest.raises(ValueError, match="target-class"):
        attack("sig", 0.2).poison(make_set())  # 48 wanted, 24 images of the target class


def test_unknown_attack_lists_all():
    with pytest.raises(ValueError, match="valid choices: " + ", ".join(sorted([*ALL, "none"]))):
        build_attack("kitty", 10)
