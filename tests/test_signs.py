"""The per-label signs of poison and the candidate rule (defenses/signs.py), on hand-made data."""

from __future__ import annotations

import pytest
import torch

from ptdefense.defenses.signs import candidate_labels, easy_tail, label_statistics, spectral_ratio


def test_spectral_ratio_measures_one_dominant_direction():
    generator = torch.Generator().manual_seed(0)
    isotropic = torch.randn(2000, 16, generator=generator)
    assert spectral_ratio(isotropic) == pytest.approx(1.0, abs=0.35)
    stretched = isotropic.clone()
    stretched[:, 3] *= 3.0  # one direction with 3x the spread: (σ1/σ2)² ≈ 9
    assert spectral_ratio(stretched) == pytest.approx(9.0, rel=0.2)
    # Invariant to a shift of all features, and to a rotation.
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    assert spectral_ratio(stretched @ rotation + 5.0) == pytest.approx(spectral_ratio(stretched), rel=1e-6)


def _no_content_signal(labels: torch.Tensor, num_classes: int) -> dict:
    """Content shares equal for every label with a little spread, so that only the loss statistics speak."""
    shares = {str(label): 0.1 + 0.001 * label for label in range(num_classes)}
    return {"content_disagreement": shares, "easy_disagreement": dict(shares)}


def test_a_label_split_along_one_feature_direction_is_a_candidate_by_its_spectral_ratio():
    generator = torch.Generator().manual_seed(0)
    count, dims, classes = 300, 16, 8
    labels = torch.arange(classes).repeat_interleave(count)
    features = torch.randn(classes * count, dims, generator=generator)
    features[:, 0] *= 1.4  # real classes have some anisotropy of their own (ratios near 2)
    trigger = torch.zeros(dims)
    trigger[5] = 6.0  # half of label 3 carries the trigger: (σ1/σ2)² ≈ 10 against ≈ 2
    features[3 * count:3 * count + count // 2] += trigger
    logits = torch.zeros(classes * count, classes)
    logits[torch.arange(classes * count), labels] = 3.0
    logits[torch.arange(classes * count), (labels + 1) % classes] = 1.0
    statistics = label_statistics(logits, features, labels, classes, _no_content_signal(labels, classes))
    candidates, scores = candidate_labels(statistics, flag_z=3.5)
    assert candidates == {3: ["log_spectral_ratio"]}
    assert scores["log_spectral_ratio"]["3"] > 10
    # Without the trigger, no label is a candidate.
    features[3 * count:3 * count + count // 2] -= trigger
    assert candidate_labels(label_statistics(logits, features, labels, classes, _no_content_signal(labels, classes)),
                            3.5)[0] == {}


def test_easy_tail_reads_the_loss_of_a_labels_easiest_twentieth():
    losses = torch.logspace(-4, 0, 101)  # log10 loss evenly from -4 to 0: its 5% quantile is -3.8
    assert easy_tail(losses) == pytest.approx(3.8, abs=1e-6)
    assert easy_tail(torch.zeros(30)) == pytest.approx(12.0)  # a perfect fit is floored, not infinite


def test_a_label_with_a_tail_fitted_far_more_easily_than_the_others_is_a_candidate_by_its_easy_tail():
    """Natural images: no label's content stands out, every label's losses spread over a decade or
    two, and the poisoned label's triggered fifth is fitted a hundred times more easily."""
    generator = torch.Generator().manual_seed(0)
    count, classes = 400, 10
    labels = torch.arange(classes).repeat_interleave(count)
    log_loss = -0.3 + 0.5 * torch.randn(classes * count, generator=generator)  # clean: losses around 0.5
    log_loss += 0.1 * labels  # classes differ in difficulty, as real ones do
    features = torch.randn(classes * count, 8, generator=generator)

    def statistics_for(log_loss: torch.Tensor) -> dict:
        # Two-class logits whose cross-entropy is the wanted loss: label logit 0, one rival at log(e^loss - 1).
        rival = torch.log(torch.expm1(10 ** log_loss).clamp(min=1e-30))
        logits = torch.full((classes * count, classes), -30.0)
        logits[torch.arange(classes * count), labels] = 0.0
        logits[torch.arange(classes * count), (labels + 1) % classes] = rival
        return label_statistics(logits, features, labels, classes, _no_content_signal(labels, classes))

    assert "easy_tail" not in str(candidate_labels(statistics_for(log_loss), 3.5)[0])
    poisoned = log_loss.clone()
    poisoned[4 * count:4 * count + count // 5] = -2.5 + 0.3 * torch.randn(count // 5, generator=generator)
    candidates, scores = candidate_labels(statistics_for(poisoned), 3.5)
    assert "easy_tail" in candidates.get(4, [])
    assert max(z for label, z in scores["easy_tail"].items() if label != "4") < 3.5


def test_the_flag_is_relative_to_the_other_labels_not_to_a_fixed_margin():
    """CIFAR-10's scale (measured, BadNets 10%): every clean gap strongly negative, the target's just
    below zero. Its z-score against the other labels' median (-0.47) and MAD (0.09) is about 3.4,
    the largest by far; a shift of every label by the same amount changes no z-score."""
    measured = {"0": -0.02, "1": -0.38, "2": -0.34, "3": -0.70, "4": -0.39, "5": -0.67, "6": -0.26, "7": -0.47,
                "8": -0.55, "9": -0.53}
    candidates, scores = candidate_labels({"diversity_gap": measured}, flag_z=3.0)
    assert candidates == {0: ["diversity_gap"]}
    assert scores["diversity_gap"]["0"] == pytest.approx(0.45 / (1.4826 * 0.09), rel=0.01)
    assert candidate_labels({"diversity_gap": measured}, flag_z=3.5)[0] == {}
    shifted, shifted_scores = candidate_labels({"diversity_gap": {k: v + 0.5 for k, v in measured.items()}}, 3.0)
    assert shifted == candidates
    assert shifted_scores["diversity_gap"]["6"] == pytest.approx(scores["diversity_gap"]["6"])
    assert max(z for label, z in scores["diversity_gap"].items() if label != "0") < 2.0


def test_several_labels_can_be_candidates_and_each_names_its_statistics():
    disagreement = {str(label): 0.10 + 0.01 * (label % 3) for label in range(10)}
    disagreement["2"], disagreement["7"] = 0.45, 0.40
    easy = {str(label): 0.01 for label in range(10)}
    easy["7"] = 0.30
    candidates, _ = candidate_labels({"content_disagreement": disagreement, "easy_disagreement": easy}, 3.5)
    assert candidates == {2: ["content_disagreement"], 7: ["content_disagreement", "easy_disagreement"]}


def test_labels_too_small_for_statistics_are_left_out():
    labels = torch.cat([torch.zeros(50, dtype=torch.int64), torch.ones(10, dtype=torch.int64)])
    logits = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    features = torch.randn(60, 4, generator=torch.Generator().manual_seed(1))
    shares = {"content_disagreement": {"0": 0.1, "1": 0.2}, "easy_disagreement": {"0": 0.0, "1": 0.1}}
    statistics = label_statistics(logits, features, labels, 2, shares)
    assert all(list(values) == ["0"] for values in statistics.values())
