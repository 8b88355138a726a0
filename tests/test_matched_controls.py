"""Controls of the label's own content for seeds from its low-loss mode (defenses/seeding.py,
content_matched_controls): a natural easy sub-population is not confirmed as poison, a clean-label
trigger still is. Small synthetic images, real quarantine models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.quarantine import confirm_and_isolate
from ptdefense.defenses.seeding import content_matched_controls
from ptdefense.training import FitConfig

CONFIG = FitConfig(epochs=2, batch_size=64, lr=0.05, precision="fp32", min_steps=200)
CLASSES, PER_CLASS = 4, 300
TARGET, MARKED = 3, 110  # the candidate label, and how many of its samples carry the extra mark (seeds: 75)


def marked_set(mark: str) -> tuple[ImageSet, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four classes of 16×16 images, each a bar in its own row; 110 samples of label 3 also carry a mark
    and are fitted far more easily than the rest (their losses). The seeds are capped at a quarter of
    the label (75), so 35 marked samples are left among its 150 that are neither seed nor anchor.
    `mark` "content": a second, vertical bar, a sub-population the content features see; "trigger":
    a 3×3 corner patch, which they do not (the features are the image with that corner masked, as a
    view blind to small patterns would be)."""
    generator = torch.Generator().manual_seed(5)
    count = CLASSES * PER_CLASS
    labels = torch.arange(CLASSES).repeat(PER_CLASS)
    images = torch.randint(0, 60, (count, 1, 16, 16), generator=generator).float()
    images[torch.arange(count), 0, 1 + 3 * labels, 2:14] = 230.0
    marked = torch.nonzero(labels == TARGET).flatten()[:MARKED]
    if mark == "content":
        images[marked, 0, 2:14, 12] = 230.0
    else:
        images[marked, 0, 13:16, 13:16] = 255.0
    seen = images.clone()
    seen[:, 0, 12:16, 12:16] = 0.0
    content = F.normalize(seen.flatten(1), dim=1)
    losses = 0.3 + 0.5 * torch.rand(count, generator=generator)
    losses[marked] = 1e-4 * (1 + torch.rand(MARKED, generator=generator))
    return ImageSet(images.to(torch.uint8), labels), marked, losses, content


def test_each_held_out_seed_gets_its_nearest_same_label_sample_that_is_neither_seed_nor_anchor():
    # Sample 3, an anchor, is the nearest to seed 2; sample 4, another label's, the nearest to seed 0.
    features = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.01, 1.0], [1.0, 0.01], [0.1, 0.9]]),
                           dim=1)
    labels = torch.tensor([0, 0, 0, 0, 1, 0])
    controls = content_matched_controls(features, labels, 0, seeds=torch.tensor([0, 2]), anchors=torch.tensor([3]),
                                        half_b=torch.tensor([0, 2]))
    assert controls.tolist() == [1, 5]  # not 4 (another label), not 3 (an anchor)
    no_anchor = torch.tensor([], dtype=torch.int64)
    assert content_matched_controls(features, labels, 0, seeds=torch.tensor([0, 2]), anchors=no_anchor,
                                    half_b=torch.tensor([2])).tolist() == [3]  # with no anchor, 3 is the one


def _test(mark: str, content: torch.Tensor | None) -> dict:
    train, _, losses, features = marked_set(mark)
    _, _, details = confirm_and_isolate(train, {TARGET: ["diversity_gap"]}, losses,
                                        torch.zeros(len(train), dtype=torch.bool), CLASSES, "resnet_small", 8, CONFIG,
                                        torch.device("cpu"), 0, 0.99, 0.1, rounds=1, alpha=0.001,
                                        content=content if content is None else features)
    return details["confirmation"][str(TARGET)]


def test_a_natural_easy_sub_population_is_confirmed_against_random_controls_but_not_against_its_own_content():
    with_random = _test("content", None)
    assert with_random["confirmed"], with_random  # the flaw the matched controls mend
    matched = _test("content", torch.ones(1))
    assert not matched["confirmed"], matched
    assert matched["controls"] == matched["held_out_seeds"]  # one control per held-out seed


def test_a_clean_label_trigger_is_still_confirmed_against_controls_of_its_own_content():
    matched = _test("trigger", torch.ones(1))
    assert matched["confirmed"], matched


def test_a_clean_label_trigger_stands_out_from_labels_whose_easy_samples_share_nothing():
    """The empirical null (defenses/held_out.py): every other label's easy samples (no mark) are
    seeded, trained into the quarantine class and held out the same way, and the target's trigger is
    confirmed against their effects."""
    train, _, losses, features = marked_set("trigger")
    generator = torch.Generator().manual_seed(9)
    for label in range(CLASSES - 1):  # an easy mode in each null label, of samples like the rest of it
        easy = torch.nonzero(train.labels == label).flatten()[:MARKED]
        losses[easy] = 1e-4 * (1 + torch.rand(MARKED, generator=generator))
    _, probability, details = confirm_and_isolate(train, {TARGET: ["diversity_gap"]}, losses,
                                                  torch.zeros(len(train), dtype=torch.bool), CLASSES, "resnet_small", 8,
                                                  CONFIG, torch.device("cpu"), 0, 0.99, 0.1, rounds=1, alpha=0.001,
                                                  content=features, null_labels=[0, 1, 2], flag_z=3.5)
    test = details["confirmation"][str(TARGET)]
    assert test["confirmed"] and test["null_z"] >= 3.5, test
    assert sorted(details["null_labels"]) == ["0", "1", "2"] and test["null_labels"] == [0, 1, 2]
    assert max(test["null_log_odds_ratios"]) < test["log_odds_ratio"]
    # The null labels' half A was taught the quarantine class: those seeds keep no score, so no cut takes them.
    easy_modes = torch.cat([torch.nonzero(train.labels == label).flatten()[:MARKED] for label in range(CLASSES - 1)])
    zeroed = int((probability[easy_modes] == 0).sum())
    assert 0.3 * easy_modes.numel() <= zeroed <= 0.6 * easy_modes.numel(), zeroed  # about half of each mode
    assert bool((probability[train.labels != TARGET] > 0).any())  # the rest of the null labels keep their scores


def test_only_low_loss_mode_candidates_without_an_easy_tail_are_judged_against_the_null_labels():
    """easy_tail already says the label's easiest samples stand apart from every other label's
    (the CIFAR-10 target); the null labels' modes cannot be compared with that."""
    from ptdefense.defenses.seeding import judged_against_null

    assert judged_against_null(["diversity_gap"], None) and judged_against_null(["log_spectral_ratio"], None)
    assert not judged_against_null(["easy_tail"], None) and not judged_against_null(["log_spectral_ratio", "easy_tail"], None)
    assert not judged_against_null(["easy_disagreement", "diversity_gap"], None)
    assert not judged_against_null(["diversity_gap"], 300)
