"""The final cut (defenses/modes.py) on hand-made quarantine scores: a flagged label gives up the
upper mode of its log-odds when the two modes are apart, and nothing when they are not."""

from __future__ import annotations

import torch

from ptdefense.defenses.isolation import isolate_by_modes
from ptdefense.defenses.modes import SEPARATION, isolate_upper_modes, log_odds, upper_mode
from ptdefense.defenses.verdict import INCONCLUSIVE, POISON_FOUND, verdict


def probabilities(*groups: tuple[int, float, float], seed: int = 0) -> torch.Tensor:
    """Quarantine probabilities whose log-odds are drawn from Gaussians (count, mean, spread), group after group."""
    generator = torch.Generator().manual_seed(seed)
    log_odds_values = torch.cat([mean + spread * torch.randn(count, generator=generator, dtype=torch.float64)
                                 for count, mean, spread in groups])
    return torch.sigmoid(log_odds_values).float()


def test_log_odds_inverts_the_sigmoid_and_clips_certainty():
    values = torch.tensor([0.5, 0.9, 0.0, 1.0])
    odds = log_odds(values)
    assert abs(float(odds[0])) < 1e-9 and abs(float(odds[1]) - 2.1972) < 1e-3
    assert torch.isfinite(odds).all() and float(odds[2]) < -13 and float(odds[3]) > 13


def test_two_separate_modes_give_up_the_upper_one():
    scores = probabilities((900, -8.0, 1.5), (100, 5.0, 2.0))
    result = upper_mode(scores, 0.1, seed=0)
    assert result["separated"] and result["ashman_d"] > SEPARATION
    assert -8.0 < result["cut"] < 5.0
    taken = log_odds(scores) >= result["cut"]
    assert int(taken[900:].sum()) >= 99  # the upper mode, nearly all of it
    assert int(taken[:900].sum()) <= 5  # and almost nothing of the lower one


def test_a_lower_posterior_cuts_lower():
    scores = probabilities((900, -4.0, 2.0), (100, 4.0, 2.0))
    assert upper_mode(scores, 0.1, seed=0)["cut"] < upper_mode(scores, 0.5, seed=0)["cut"]


def test_one_graded_population_is_not_separated():
    # a natural ambiguity: one broad spread of log-odds, however many samples are high
    result = upper_mode(probabilities((3000, -1.0, 3.5)), 0.1, seed=0)
    assert not result["separated"] and result["ashman_d"] <= SEPARATION
    assert "no separate mode" in result["reason"]


def test_a_broad_lower_mode_does_not_win_back_the_upper_tail():
    # Gaussian posteriors are not monotone when the lower component is the broader one; the cut is
    scores = probabilities((900, -6.0, 3.0), (100, 6.0, 0.5), (5, 13.0, 0.1))
    isolated, _, figures = isolate_upper_modes(torch.zeros(1005, dtype=torch.int64), scores, [0], 0.1, seed=0)
    assert figures["0"]["separated"]
    assert set(range(1000, 1005)) <= set(isolated.tolist())


def test_too_few_samples_are_not_separated():
    assert not upper_mode(probabilities((10, -8.0, 1.0), (5, 6.0, 1.0)), 0.1, seed=0)["separated"]


def test_only_the_flagged_labels_are_cut():
    labels = torch.cat([torch.zeros(1000, dtype=torch.int64), torch.ones(1000, dtype=torch.int64)])
    scores = torch.cat([probabilities((900, -8.0, 1.5), (100, 5.0, 2.0)),
                        probabilities((900, -8.0, 1.5), (100, 5.0, 2.0), seed=1)])
    isolated, _, figures = isolate_upper_modes(labels, scores, [1], 0.1, seed=0)
    assert set(figures) == {"1"} and bool((labels[isolated] == 1).all()) and isolated.numel() >= 99


def test_an_unseparated_label_isolates_nothing_and_the_verdict_says_why():
    labels = torch.cat([torch.zeros(1000, dtype=torch.int64), torch.full((3000,), 6, dtype=torch.int64)])
    scores = torch.cat([probabilities((900, -8.0, 1.5), (100, 5.0, 2.0)), probabilities((3000, -1.0, 3.5), seed=2)])
    flagged_before = torch.nonzero(scores > 0.1).flatten()  # what a fixed cut would take: both labels
    assert set(labels[flagged_before].tolist()) == {0, 6}
    details = {"z": {}, "suspicious_classes": [0, 6], "confirmation": {}}
    isolated, _ = isolate_by_modes(labels, flagged_before, scores, 0.1, 0, details)
    assert set(labels[isolated].tolist()) == {0}
    assert details["unseparated_classes"] == [6] and details["suspicious_classes"] == [0]
    found = verdict(details, int(isolated.numel()))
    assert found["verdict"] == POISON_FOUND and "label 6" in found["verdict_reason"]
    # the same label alone: nothing isolated, and the verdict cannot call the set clean
    alone = {"z": {}, "suspicious_classes": [6], "confirmation": {}}
    nothing, unlearnt = isolate_by_modes(labels[1000:], torch.arange(3000)[scores[1000:] > 0.1], scores[1000:], 0.1, 0,
                                         alone)
    assert nothing.numel() == 0 and unlearnt.numel() == 0
    result = verdict(alone, 0)
    assert result["verdict"] == INCONCLUSIVE and "no separate mode" in result["verdict_reason"]


def test_an_upper_mode_that_claims_the_lower_mean_cuts_there_and_says_so():
    # the broad, heavy upper component already holds about 18% posterior at the lower mean: poison
    # left in costs more than clean samples lost, so the cut is the lower mean, flagged as an overlap
    scores = probabilities((100, 0.0, 0.2), (1000, 3.5, 1.2))
    result = upper_mode(scores, 0.03, seed=0)
    assert result["separated"] and result["overlap"]
    assert abs(result["cut"] - result["means"][0]) < 1e-9
    assert not upper_mode(probabilities((900, -8.0, 1.5), (100, 5.0, 2.0)), 0.03, seed=0)["overlap"]


def test_only_the_isolated_samples_the_upper_mode_is_sure_of_are_confident():
    # a band between the modes: isolated (posterior ≥ 0.03, poison left in is the worse error) but
    # not confident (posterior < 0.5): the finetune leaves those out without unlearning them
    labels = torch.zeros(3000, dtype=torch.int64)
    scores = probabilities((2700, -4.0, 2.0), (300, 4.0, 1.0))
    isolated, confident, figures = isolate_upper_modes(labels, scores, [0], 0.03, seed=0)
    result = figures["0"]
    assert result["cut"] < result["confident_cut"] < result["means"][1]
    assert set(confident.tolist()) < set(isolated.tolist())
    assert result["confident"] == confident.numel()
    odds = log_odds(scores)
    assert bool((odds[confident] >= result["confident_cut"]).all())
    band = sorted(set(isolated.tolist()) - set(confident.tolist()))
    assert len(band) >= 5 and bool((odds[band] < result["confident_cut"]).all())
    # the band is mostly the lower mode's tail; the confident set is nearly all upper mode
    assert sum(index < 2700 for index in band) > len(band) / 2
    assert sum(index >= 2700 for index in confident.tolist()) >= 0.95 * confident.numel()
    # at a posterior above 0.5 the confident cut is the isolation cut itself
    strict = upper_mode(scores, 0.7, seed=0)
    assert strict["confident_cut"] == strict["cut"]


def test_unscored_samples_are_neither_fitted_nor_isolated():
    # a guard (every sample is scored when the cut runs): samples at probability 0 would pile up at
    # the clip as a spike, a component of their own, and the cut beside it would take every scored
    # sample, clean or not
    scored = probabilities((900, -3.0, 1.5), (100, 6.0, 1.0))
    scores = torch.cat([torch.zeros(3000, dtype=scored.dtype), scored])
    isolated, _, figures = isolate_upper_modes(torch.zeros(4000, dtype=torch.int64), scores, [0], 0.03, seed=0)
    assert figures["0"]["scored"] == 1000
    assert isolated.min() >= 3000 + 900 - 10 and 95 <= isolated.numel() <= 110


def test_a_confirmed_label_is_cut_even_with_nothing_above_the_tests_threshold():
    # the flagged set is the labels the tests flagged, not only those of samples above 0.1
    labels = torch.zeros(1000, dtype=torch.int64)
    scores = probabilities((900, -14.0, 1.0), (100, -4.0, 0.5))  # all below 0.1, yet two modes
    details = {"z": {}, "suspicious_classes": [0], "confirmation": {"0": {"confirmed": True}}}
    isolated, _ = isolate_by_modes(labels, labels[:0], scores, 0.03, 0, details)
    assert details["modes"]["0"]["separated"] and 95 <= isolated.numel() <= 110


def test_a_pooled_flag_left_whole_is_described_as_the_pooled_tests_once_per_label():
    modes = {"3": {"separated": False, "reason": "its quarantine log-odds form no separate mode (Ashman's D 1.20 ≤ 2)"}}
    details = {"z": {}, "suspicious_classes": [], "unseparated_classes": [3], "modes": modes,
               "confirmation": {"3": {"confirmed": False, "reason": "cleared: held-out seeds quarantined 2/40"}}}
    reason = verdict(details, 0)["verdict_reason"]
    assert reason.count("label 3") == 1
    assert "the pooled test flagged it" in reason and "passed the quarantine test" not in reason
    assert "cleared: held-out seeds quarantined 2/40" in reason


def test_quarantine_scores_keep_log_odds_a_float32_softmax_would_round_to_certainty():
    # float32 rounds p to 1 above log-odds 16.6: strongly learnt poison would pile up at the clip
    from ptdefense.defenses.quarantine import quarantine_probability
    from ptdefense.models.registry import build_model

    model = build_model("resnet_small", 1, 3, 4)  # two labels and the quarantine class
    head = model.blocks["head"][2]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 25.0]))
    probability = quarantine_probability(model, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), 2, torch.device("cpu"))
    assert probability.dtype == torch.float64
    expected = 25.0 - float(torch.log(torch.tensor(2.0, dtype=torch.float64)))  # against two labels' logits of 0
    assert torch.allclose(log_odds(probability), torch.full((4,), expected, dtype=torch.float64), atol=1e-3)


def test_isolate_samples_cuts_a_confirmed_label_with_nothing_above_the_tests_threshold(monkeypatch):
    # The stage's path (isolate_samples), with the tests' outcome stubbed: label 0 confirmed, but no
    # sample above 0.1 after the last round. Its upper mode is still isolated.
    from ptdefense.data.dataset import ImageSet
    from ptdefense.defenses import isolation
    from ptdefense.models.registry import build_model
    from ptdefense.params import IsolationParams

    count = 1000
    labels = torch.cat([torch.zeros(count, dtype=torch.int64), torch.ones(count, dtype=torch.int64)])
    train = ImageSet(torch.zeros(2 * count, 1, 8, 8, dtype=torch.uint8), labels)
    scores = torch.cat([probabilities((900, -14.0, 1.0), (100, -4.0, 0.5)), probabilities((count, -14.0, 1.0), seed=1)])
    found = {"confirmed_classes": [0], "confirmation": {"0": {"confirmed": True, "controls": 5}}, "candidates": {"0": []},
             "seed_count": [10], "quarantine_sample_epochs": 0}
    monkeypatch.setattr(isolation, "signs_and_candidates", lambda *a, **k: ({0: ["diversity_gap"]}, None, {"z": {}}))
    monkeypatch.setattr(isolation, "confirm_in_turn", lambda *a, **k: (labels[:0], scores.double(), dict(found)))
    monkeypatch.setattr(isolation, "pooled_test", lambda *a, **k: (
        labels[:0], torch.zeros(2 * count, dtype=torch.float64),
        {"confirmed": False, "reason": "stubbed", "quarantine_sample_epochs": 0}))
    model = build_model("resnet_small", 1, 2, 4)
    result, _ = isolation.isolate_samples(model, train, IsolationParams(), 2, "resnet_small", 4, 1,
                                          torch.device("cpu"), 0)
    assert set(labels[result.isolated].tolist()) == {0} and 95 <= result.isolated.numel() <= 110
    assert result.details["modes"]["0"]["separated"] and result.details["suspicious_classes"] == [0]
