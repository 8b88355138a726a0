"""The pooled test for poison spread over every label (defenses/pooled.py): its parts on hand-made
data, then the whole test on small synthetic images with and without an all-to-all trigger."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.content import neighbour_votes
from ptdefense.defenses.pooled import MIN_EXCESS, excess_test, matched_controls, pooled_test
from ptdefense.training import FitConfig


def test_each_query_gets_its_nearest_eligible_sample_and_no_sample_twice():
    features = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7], [1.0, 0.05]]),
                           dim=1)
    eligible = torch.tensor([False, True, False, True, True, True])
    # Query 0's nearest eligible is 5, then 1; query 2's is 3.
    assert matched_controls(features, torch.tensor([0, 2]), eligible).tolist() == [5, 3]
    # Two queries near the same point: the second gets the next nearest, not the same one.
    assert matched_controls(features, torch.tensor([0, 0]), eligible).tolist() == [5, 1]
    # More queries than eligible samples: one control per query while any is left.
    assert matched_controls(features, torch.tensor([0, 0, 0, 0, 0]), eligible).tolist() == [5, 1, 4, 3]
    assert matched_controls(features, torch.tensor([0]), torch.zeros(6, dtype=torch.bool)).tolist() == []


def test_the_excess_test_needs_significance_and_the_least_excess():
    assert excess_test(40, 100, 0, 100, 1e-3)["confirmed"]  # a trigger: confident on 40% against none
    weak = excess_test(MIN_EXCESS - 1, 2000, 0, 2000, 1e-3)  # as many as the clean sets' misses, no more
    assert not weak["confirmed"] and "needs" in weak["reason"]
    assert not excess_test(30, 100, 25, 100, 1e-3)["confirmed"]  # as often as the controls: content, not a trigger
    level = excess_test(12, 100, 2, 100, 1.0)
    assert level["confirmed"] and not excess_test(12, 100, 2, 100, level["p_value"] / 2)["confirmed"]
    assert not excess_test(0, 0, 0, 0, 1e-3)["confirmed"]


def _bars(count: int, seed: int) -> ImageSet:
    """16×16 images of 10 classes, class c a bright bar at row 1 + c, with noise; 5% carry a random
    wrong label (label noise: content that disagrees with its label, and shares nothing)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat(count // 10)
    images = torch.randint(0, 60, (labels.numel(), 1, 16, 16), generator=generator).float()
    images[torch.arange(labels.numel()), 0, 1 + labels, 2:14] = 230.0
    noisy = torch.rand(labels.numel(), generator=generator) < 0.05
    labels[noisy] = (labels[noisy] + torch.randint(1, 10, (int(noisy.sum()),), generator=generator)) % 10
    return ImageSet(images.to(torch.uint8), labels)


def _pooled(data: ImageSet, removed: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    # A stand-in for the frozen prefix's view: the row profile left of the trigger's corner (content only)
    profile = data.images[:, 0, :, 2:12].float().mean(2)
    features = F.normalize(profile - profile.mean(0), dim=1)
    votes = neighbour_votes(features, data.labels, 10)
    config = FitConfig(epochs=2, batch_size=64, lr=0.05, precision="fp32", min_steps=300)
    isolated, _, details = pooled_test(data, features, votes.argmax(1) != data.labels, 10, "resnet_small", 8, config, torch.device("cpu"),
                                       seed=0, alpha=1e-3, threshold=0.1, removed=removed)
    return isolated, details


def _all_to_all(data: ImageSet) -> torch.Tensor:
    poison = torch.randperm(2000, generator=torch.Generator().manual_seed(2))[:200]  # a tenth, noise or not
    data.images[poison, 0, 13:16, 13:16] = 255  # a white corner square
    data.labels[poison] = (data.labels[poison] + 1) % 10  # every label y → y + 1
    return poison


def test_an_all_to_all_trigger_is_found_and_isolated_across_labels():
    data = _bars(2000, seed=1)
    poison = _all_to_all(data)
    isolated, details = _pooled(data)
    assert details["confirmed"], details
    found = int(torch.isin(isolated, poison).sum())
    assert found >= 0.9 * poison.numel(), (found, isolated.numel())
    assert isolated.numel() - found <= 0.02 * (2000 - poison.numel()), (found, isolated.numel())
    assert len(set(data.labels[isolated].tolist())) == 10  # from every label, not one


def test_label_noise_alone_does_not_pass_the_pooled_test():
    isolated, details = _pooled(_bars(2000, seed=1))
    assert details["pool"] > 50  # the mislabelled 5% disagree with their neighbours...
    assert not details["confirmed"], details  # ...but shares no trigger
    assert isolated.numel() == 0


def test_after_one_receiving_label_is_isolated_the_rest_of_an_all_to_all_trigger_is_still_found():
    # As when the per-label test confirms one label of an all-to-all attack and isolates its poison.
    data = _bars(2000, seed=1)
    poison = _all_to_all(data)
    removed = torch.zeros(2000, dtype=torch.bool)
    removed[poison[data.labels[poison] == 1]] = True
    left = poison[~removed[poison]]
    isolated, details = _pooled(data, removed)
    assert details["confirmed"], details
    assert int(torch.isin(isolated, left).sum()) >= 0.9 * left.numel()
    assert len(set(data.labels[isolated].tolist()) - {1}) == 9  # the other nine labels' poison


def test_once_every_poisoned_sample_is_removed_the_pooled_test_finds_nothing_left():
    # As in an all-to-one attack whose target label was confirmed and isolated: what is left is clean.
    data = _bars(2000, seed=1)
    poison = _all_to_all(data)
    removed = torch.zeros(2000, dtype=torch.bool)
    removed[poison] = True
    isolated, details = _pooled(data, removed)
    assert not details["confirmed"], details
    assert isolated.numel() == 0


def test_a_confirmed_label_explained_by_the_pooled_model_keeps_only_what_that_model_quarantines():
    """Step 6 on hand-made probabilities. Label 6: 100 isolated, 60 of them carrying the pooled
    trigger (pooled probability 0.95) and 40 clean ambiguities (0.02); its 900 other samples at 0.01.
    Label 0: 50 isolated whose trigger the pooled model never learnt (all at 0.01)."""
    from ptdefense.defenses.pooled import rejudge_explained_labels

    labels = torch.cat([torch.full((1000,), 6), torch.full((1000,), 0)])
    isolated = torch.cat([torch.arange(100), torch.arange(1000, 1050)])
    per_label = torch.zeros(2000)
    per_label[isolated] = 0.9
    pooled = torch.full((2000,), 0.01)
    pooled[:60] = 0.95
    pooled[60:100] = 0.02
    kept, probability, tests = rejudge_explained_labels(labels, isolated, per_label, pooled, [0, 6], 0.1, 0.001)
    assert tests["6"]["explained"] and tests["6"]["kept"] == 60
    assert (tests["6"]["isolated_pooled_quarantined"], tests["6"]["others_pooled_quarantined"]) == (60, 0)
    assert not tests["0"]["explained"]  # another trigger: its own isolation stands
    assert set(kept.tolist()) == set(range(60)) | set(range(1000, 1050))
    assert torch.equal(probability[:1000], pooled[:1000]) and torch.equal(probability[1000:], per_label[1000:])


def test_a_label_whose_isolation_the_pooled_model_quarantines_no_more_than_its_other_samples_is_kept():
    """The null: the pooled model's hits among the isolated (3 of 100) are no more frequent than
    among the label's other samples (30 of 900), so the per-label isolation is left as it was."""
    from ptdefense.defenses.pooled import rejudge_explained_labels

    labels = torch.zeros(1000, dtype=torch.int64)
    isolated = torch.arange(100)
    pooled = torch.full((1000,), 0.01)
    pooled[:3] = 0.5
    pooled[100:130] = 0.5
    kept, _, tests = rejudge_explained_labels(labels, isolated, torch.zeros(1000), pooled, [0], 0.1, 0.001)
    assert not tests["0"]["explained"] and torch.equal(kept, isolated)
