"""`freeze_layers: auto` (defenses/depth.py): the tie rule on hand-made shares, and the choice on a real prefix."""

from __future__ import annotations

import math

import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.depth import (choose_freeze_layers, deepest_auto_depth, deepest_tied_depth,
                                      label_agreement, resolve_freeze_layers)
from ptdefense.defenses.pt import build_partial_model


def test_auto_leaves_a_convolutional_block_and_the_head_trainable():
    assert deepest_auto_depth(5) == 3  # resnet_small, vgg_small: layer3 (stage4) and the head train
    assert deepest_auto_depth(6) == 4  # resnet18: layer4 and the head train
    assert deepest_auto_depth(2) == 1


def test_the_deepest_depth_tied_with_the_best_is_taken():
    # 500 samples a label at 92%: one standard error is 1.2 points, the tie margin 2.4 points.
    depth, tolerance = deepest_tied_depth({1: 0.88, 2: 0.922, 3: 0.905}, 500)
    assert math.isclose(tolerance, 2 * math.sqrt(0.922 * 0.078 / 500))
    assert depth == 3  # 1.7 points below the best: a tie
    assert deepest_tied_depth({1: 0.88, 2: 0.922, 3: 0.89}, 500)[0] == 2  # 3.2 points below: worse content


def test_more_samples_make_a_smaller_difference_decisive():
    shares = {1: 0.90, 2: 0.92, 3: 0.91}
    assert deepest_tied_depth(shares, 400)[0] == 3
    assert deepest_tied_depth(shares, 20_000)[0] == 2


def test_label_agreement_is_the_share_whose_neighbours_majority_is_the_label():
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 5)
    votes = torch.zeros(45, 3)
    votes[torch.arange(45), labels] = 1.0
    votes[:5] = torch.tensor([0.2, 0.8, 0.0])  # five of label 0 look like 1
    shares = label_agreement(votes, labels, 3)
    assert shares == {0: 0.75, 1: 1.0}  # label 2 has too few samples to give a share


def _stripes(per_class: int, seed: int) -> ImageSet:
    """Four classes of 16×16 images: stripes across, down, and on either diagonal, at random phases."""
    generator = torch.Generator().manual_seed(seed)
    rows, columns = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    directions = [rows, columns, rows + columns, rows - columns]
    labels = torch.arange(4).repeat_interleave(per_class)
    phases = torch.rand(labels.numel(), generator=generator) * 2 * math.pi
    images = torch.stack([torch.sin(directions[label] * 1.2 + phase) for label, phase in zip(labels.tolist(), phases)])
    images = (images * 100 + 128 + 20 * torch.randn(images.shape, generator=generator)).clamp(0, 255)
    return ImageSet(images.round().to(torch.uint8).unsqueeze(1), labels)


def test_choose_reads_every_depth_of_the_prefix_and_picks_one_the_content_supports():
    train = _stripes(60, seed=0)
    model = build_partial_model("resnet_small", 1, 4, 8, 3, "recalibrate", train.images, torch.device("cpu"), 0)
    depth, details = choose_freeze_layers(model, train, 4, 3, torch.device("cpu"), seed=0)
    agreement = {int(d): share for d, share in details["median_label_agreement"].items()}
    assert sorted(agreement) == [1, 2, 3]
    assert details["freeze_layers_chosen"] == depth
    assert max(agreement.values()) >= 0.9  # random convolutions tell stripe directions apart
    assert agreement[depth] >= max(agreement.values()) - details["tie_tolerance"]
    assert all(agreement[deeper] < max(agreement.values()) - details["tie_tolerance"]
               for deeper in agreement if deeper > depth)  # no deeper depth was tied
    # The same seed gives the same choice (the sample and the prefix are seeded).
    again = build_partial_model("resnet_small", 1, 4, 8, 3, "recalibrate", train.images, torch.device("cpu"), 0)
    assert choose_freeze_layers(again, train, 4, 3, torch.device("cpu"), seed=0) == (depth, details)


def test_auto_builds_once_and_gives_the_model_a_fresh_build_at_the_chosen_depth_would_be(monkeypatch):
    train = _stripes(30, seed=1)
    # Stripes tie at every depth (3 is taken); pin the choice at 1 to see the probe model re-frozen shallower.
    import ptdefense.defenses.depth as depth_module

    real_choice = depth_module.choose_freeze_layers
    monkeypatch.setattr(depth_module, "choose_freeze_layers",
                        lambda *args, **kwargs: (1, {**real_choice(*args, **kwargs)[1], "freeze_layers_chosen": 1}))
    builds = []

    def build(depth: int):
        builds.append(depth)
        return build_partial_model("resnet_small", 1, 4, 8, depth, "recalibrate", train.images, torch.device("cpu"), 0)

    model, depth, choice = resolve_freeze_layers("auto", build, train, 4, 5, torch.device("cpu"), seed=0)
    assert builds == [3] and depth == 1 and choice["freeze_layers_chosen"] == 1 and model.frozen_prefix == 1
    fresh = build(depth)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == \
        [name for name, p in fresh.named_parameters() if p.requires_grad]
    for (name, ours), theirs in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(ours, theirs), name  # weights and BatchNorm statistics untouched by the probe
    fixed, depth_two, nothing = resolve_freeze_layers(2, build, train, 4, 5, torch.device("cpu"), seed=0)
    assert (depth_two, nothing, fixed.frozen_prefix) == (2, {}, 2)
