"""BadNets: who gets poisoned, what changes in a poisoned sample, and what must not change."""

from __future__ import annotations

import pytest
import torch

from ptdefense.attacks.registry import attack_names, build_attack
from ptdefense.data.dataset import ImageSet


TARGET = 0


def make_set(n: int, seed: int = 0, shape=(1, 28, 28), num_classes: int = 10) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    # Pixels below 255 so that a patch of 255 is always visible as a change.
    images = torch.randint(0, 255, (n, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (n,), dtype=torch.int64, generator=generator)
    return ImageSet(images, labels)


def badnets(poison_rate: float = 0.1, seed: int = 0, target_label: int = TARGET):
    return build_attack("badnets", 10, poison_rate=poison_rate, target_label=target_label, seed=seed,
                        settings={"patch_size": 3, "patch_value": 255})


def patch_mask(shape) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., -3:, -3:] = True
    return mask


def test_registry():
    assert "badnets" in attack_names()
    assert attack_names() == sorted(attack_names())


@pytest.mark.parametrize("n", [10, 37, 100, 250])
@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1, 0.25, 0.5])
def test_poison_count_and_indices(n, rate):
    data = make_set(n, seed=n)
    result = badnets(rate, seed=3).poison(data)
    indices = result.poison_indices
    assert indices.dtype == torch.int64
    assert indices.numel() == round(rate * n)
    assert torch.equal(indices, torch.sort(indices).values)
    assert torch.unique(indices).numel() == indices.numel()
    if indices.numel():
        assert int(indices.min()) >= 0 and int(indices.max()) < n
    # Never a sample that already had the target label: relabelling it would change nothing.
    assert not bool((data.labels[indices] == TARGET).any())


def test_poisoned_labels_and_images():
    data = make_set(200, seed=1)
    original_images, original_labels = data.images.clone(), data.labels.clone()
    result = badnets(0.2, seed=5).poison(data)
    poisoned, indices = result.data, result.poison_indices
    assert len(poisoned) == len(data)
    assert poisoned.images.dtype == torch.uint8 and poisoned.labels.dtype == torch.int64
    assert poisoned.images.shape == data.images.shape

    is_poison = torch.zeros(len(data), dtype=torch.bool)
    is_poison[indices] = True
    # Labels: target for the victims, untouched for everyone else.
    assert bool((poisoned.labels[is_poison] == TARGET).all())
    assert torch.equal(poisoned.labels[~is_poison], original_labels[~is_poison])
    # Images: byte-identical outside the victims.
    assert torch.equal(poisoned.images[~is_poison], original_images[~is_poison])
    # Victims: 3x3 bottom-right patch of 255, the rest of the image unchanged.
    mask = patch_mask(poisoned.images[is_poison].shape)
    victims, before = poisoned.images[is_poison], original_images[is_poison]
    assert bool((victims[mask] == 255).all())
    assert torch.equal(victims[~mask], before[~mask])
    # The only pixels that differ anywhere are inside the victims' patches.
    changed = poisoned.images != original_images
    assert bool(changed.any())
    assert not bool(changed[:, :, :-3, :].any())
    assert not bool(changed[:, :, :, :-3].any())
    # The input set is left as it was.
    assert torch.equal(data.images, original_images)
    assert torch.equal(data.labels, original_labels)


def test_patch_on_multichannel_images():
    data = make_set(50, seed=2, shape=(3, 32, 32))
    result = badnets(0.2, seed=0).poison(data)
    victims = result.data.images[result.poison_indices]
    assert bool((victims[:, :, -3:, -3:] == 255).all())  # every channel
    assert torch.equal(victims[:, :, :-3, :], data.images[result.poison_indices][:, :, :-3, :])
    assert torch.equal(victims[:, :, -3:, :-3], data.images[result.poison_indices][:, :, -3:, :-3])


def test_nonzero_target_label():
    data = make_set(120, seed=4)
    result = badnets(0.1, seed=0, target_label=7).poison(data)
    assert not bool((data.labels[result.poison_indices] == 7).any())
    assert bool((result.data.labels[result.poison_indices] == 7).all())


def test_same_seed_same_result():
    data = make_set(300, seed=9)
    a, b = badnets(0.1, seed=11).poison(data), badnets(0.1, seed=11).poison(data)
    assert torch.equal(a.poison_indices, b.poison_indices)
    assert torch.equal(a.data.images, b.data.images)
    assert torch.equal(a.data.labels, b.data.labels)


def test_different_seed_different_indices():
    data = make_set(300, seed=9)
    a, b = badnets(0.1, seed=11).poison(data), badnets(0.1, seed=12).poison(data)
    assert a.poison_indices.numel() == b.poison_indices.numel()
    assert not torch.equal(a.poison_indices, b.poison_indices)


def test_poison_independent_of_global_rng():
    data = make_set(300, seed=9)
    torch.manual_seed(1)
    a = badnets(0.1, seed=11).poison(data)
    torch.manual_seed(2)
    torch.rand(10)
    b = badnets(0.1, seed=11).poison(data)
    assert torch.equal(a.poison_indices, b.poison_indices)


def test_too_many_victims_requested():
    # 10 samples, 8 of them already the target: only 2 are eligible, 0.5 x 10 = 5 are asked for.
    images = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 0, 3, 0, 0, 5, 0, 0])
    with pytest.raises(ValueError, match="eligible"):
        badnets(0.5).poison(ImageSet(images, labels))
    # Exactly as many as eligible is fine.
    result = badnets(0.2).poison(ImageSet(images, labels))
    assert result.poison_indices.tolist() == [4, 7]


def test_triggered_test_set():
    test = make_set(80, seed=6)
    original_images, original_labels = test.images.clone(), test.labels.clone()
    triggered = badnets(0.1).triggered_test(test)
    keep = original_labels != TARGET
    assert len(triggered.data) == int(keep.sum())
    assert torch.equal(triggered.data.labels, original_labels[keep])  # true labels kept
    assert triggered.attack_targets.dtype == torch.int64
    assert triggered.attack_targets.shape == (int(keep.sum()),)
    assert bool((triggered.attack_targets == TARGET).all())
    images = triggered.data.images
    assert images.dtype == torch.uint8
    assert bool((images[:, :, -3:, -3:] == 255).all())
    mask = patch_mask(images.shape)
    assert torch.equal(images[~mask], original_images[keep][~mask])
    assert torch.equal(test.images, original_images)
    assert torch.equal(test.labels, original_labels)


def test_triggered_test_with_only_target_class():
    test = ImageSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    triggered = badnets().triggered_test(test)
    assert len(triggered.data) == 0
    assert triggered.attack_targets.numel() == 0


def test_apply_trigger_is_pure():
    images = make_set(5, seed=7).images
    before = images.clone()
    out = badnets().apply_trigger(images)
    assert torch.equal(images, before)
    assert out.data_ptr() != images.data_ptr()
    assert bool((out[..., -3:, -3:] == 255).all())
    assert out.dtype == torch.uint8


def test_apply_trigger_patch_value_and_size():
    attack = build_attack("badnets", 10, poison_rate=0.1, target_label=0, seed=0,
                          settings={"patch_size": 5, "patch_value": 17})
    out = attack.apply_trigger(torch.zeros(2, 1, 10, 10, dtype=torch.uint8))
    assert int((out == 17).sum()) == 2 * 25
    assert bool((out[..., -5:, -5:] == 17).all())


def test_apply_trigger_patch_larger_than_image():
    with pytest.raises(ValueError, match="patch_size"):
        badnets().apply_trigger(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))


def test_unknown_attack():
    with pytest.raises(ValueError) as info:
        build_attack("nope", 10, poison_rate=0.1, target_label=0)
    assert "nope" in str(info.value)
    assert "badnets" in str(info.value)
