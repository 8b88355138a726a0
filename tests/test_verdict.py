"""The verdict's statistic (a label's modified z-score against the other labels) and its rule, on
hand-made statistics; and the training budget that scales with the size of the data."""

from __future__ import annotations

import math

import pytest

from ptdefense.defenses.verdict import (INCONCLUSIVE, NO_POISON_FOUND, POISON_FOUND, outlier_scores, verdict,
                                        verdict_markdown)
from ptdefense.training import FitConfig

CLEAN_GAPS = {"0": -0.07, "1": -0.04, "2": -0.10, "3": -0.10, "4": 0.02, "5": -0.06, "6": -0.04, "7": -0.09,
              "8": -0.03, "9": -0.05}
CLEAN_RATIOS = {label: 1.8 + 0.05 * int(label) for label in CLEAN_GAPS}


def details(gaps=CLEAN_GAPS, ratios=CLEAN_RATIOS, **extra) -> dict:
    """Isolation's details as the isolate stage writes them: the z-scores of each statistic."""
    z = {"diversity_gap": outlier_scores(gaps),
         "log_spectral_ratio": outlier_scores({label: math.log(value) for label, value in ratios.items()})}
    return {"z": z, "suspicious_classes": [], **extra}


def test_outlier_score_is_the_distance_from_the_others_median_in_robust_deviations():
    values = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 13.0}
    # for "e": the others' median 2.5, their absolute deviations 1.5, 0.5, 0.5, 1.5 → MAD 1.0
    assert outlier_scores(values)["e"] == pytest.approx((13.0 - 2.5) / 1.4826)
    # a label cannot mask itself: "e" is left out of the centre and spread it is compared with
    assert outlier_scores(values)["a"] == pytest.approx((1.0 - 3.5) / (1.4826 * 1.0))


def test_outlier_score_falls_back_to_the_standard_deviation_when_the_others_agree():
    scores = outlier_scores({"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0})
    assert scores["d"] > 1e6  # identical others: any departure is extreme, not a division by zero
    assert math.isfinite(scores["a"])


def test_clean_statistics_give_no_poison_found():
    result = verdict(details(), 0)
    assert result["verdict"] == NO_POISON_FOUND, result["verdict_reason"]  # label 4's gap: z 2.7 < 3
    assert result["verdict_z"] < result["verdict_clear_z"]


def test_a_label_that_stands_out_without_isolation_is_inconclusive_not_clean():
    result = verdict(details(gaps={**CLEAN_GAPS, "0": 0.12}), 0)  # no candidate, yet far above the others
    assert result["verdict"] == INCONCLUSIVE
    assert result["verdict_label"] == "0" and result["verdict_statistic"] == "diversity_gap"
    assert "label 0" in result["verdict_reason"]


def test_a_one_sided_spectrum_is_read_on_the_log_scale():
    result = verdict(details(ratios={**CLEAN_RATIOS, "3": 4.4}), 0)  # one direction dominates label 3
    assert result["verdict"] == INCONCLUSIVE and result["verdict_label"] == "3"
    assert result["verdict_statistic"] == "log_spectral_ratio"


def test_a_candidate_that_fails_the_quarantine_test_is_inconclusive_with_its_figures():
    test = {"confirmed": False, "reason": "cleared: held-out seeds quarantined 3/50, controls 18/300, p=0.4"}
    result = verdict(details(confirmation={"8": test}), 0)
    assert result["verdict"] == INCONCLUSIVE
    assert "label 8" in result["verdict_reason"] and "3/50" in result["verdict_reason"]


def test_isolated_samples_mean_poison_found_with_the_test_that_confirmed_them():
    test = {"confirmed": True, "held_out_seeds": 50, "held_out_seeds_quarantined": 47, "controls": 300,
            "controls_quarantined": 20, "p_value": 1e-30}
    result = verdict(details(gaps={**CLEAN_GAPS, "0": 0.41}, suspicious_classes=[0], confirmation={"0": test}), 6001)
    assert result["verdict"] == POISON_FOUND
    assert "6001" in result["verdict_reason"] and "47/50" in result["verdict_reason"]


def test_poison_found_by_the_pooled_test_names_it_and_its_figures_not_a_cleared_candidate():
    pooled = {"confirmed": True, "reason": "held-out disagreeing samples confidently quarantined 245/2575, "
                                           "content-matched controls 0/2575, p=1e-80"}
    cleared = {"confirmed": False, "reason": "cleared: held-out seeds quarantined 3/50, controls 18/300, p=0.4"}
    result = verdict(details(suspicious_classes=list(range(10)), confirmation={"6": cleared}, pooled_test=pooled),
                     1975)
    assert result["verdict"] == POISON_FOUND
    assert "pooled test" in result["verdict_reason"] and "245/2575" in result["verdict_reason"]
    assert "3/50" not in result["verdict_reason"]
    # A pooled test that did not confirm changes nothing: clean statistics stay clean.
    assert verdict(details(pooled_test={"confirmed": False, "reason": "…"}), 0)["verdict"] == NO_POISON_FOUND
    # One that confirmed a trigger but isolated nothing cannot call the set clean.
    found_nothing = verdict(details(pooled_test=pooled), 0)
    assert found_nothing["verdict"] == INCONCLUSIVE and "245/2575" in found_nothing["verdict_reason"]


def test_a_label_confirmed_and_the_pooled_test_confirmed_name_both_figures():
    # All-to-all: one receiving label passes on its own, and the pooled test finds the rest.
    shirt = {"confirmed": True, "held_out_seeds": 223, "held_out_seeds_quarantined": 118, "controls": 1012,
             "controls_quarantined": 65, "p_value": 5e-55}
    pooled = {"confirmed": True, "reason": "held-out disagreeing samples confidently quarantined 1709/7753, "
                                           "content-matched controls 100/7753, p=0"}
    result = verdict(details(suspicious_classes=list(range(10)), confirmation={"6": shirt}, pooled_test=pooled), 7219)
    assert result["verdict"] == POISON_FOUND
    assert "pooled test" in result["verdict_reason"] and "1709/7753" in result["verdict_reason"]
    assert "label 6: held-out seeds quarantined 118/223" in result["verdict_reason"]


def test_the_report_lists_every_statistic_for_every_label():
    report = verdict_markdown(verdict(details(), 0))
    assert "| label | diversity gap z | log spectral ratio z |" in report
    assert sum(line.startswith("| ") for line in report.splitlines()) == 11  # header + 10 labels


def test_without_statistics_nothing_is_called_clean():
    assert verdict({}, 0)["verdict"] == INCONCLUSIVE  # e.g. every label under 20 samples


@pytest.mark.parametrize("samples, epochs", [(60_000, 3), (35_000, 3), (12_000, 9), (4_000, 25), (100, 800)])
def test_small_sets_get_enough_optimiser_steps(samples, epochs):
    config = FitConfig(epochs=3, batch_size=128, lr=0.1, min_steps=800)
    scaled = config.for_samples(samples)
    assert scaled.epochs == epochs
    steps_per_epoch = -(-samples // 128)
    assert scaled.epochs * steps_per_epoch >= 800 and (scaled.epochs - 1) * steps_per_epoch < max(800, 3 * steps_per_epoch)


def test_fit_runs_the_scaled_epochs():
    import torch

    from ptdefense.data.dataset import ImageSet
    from ptdefense.models.registry import build_model
    from ptdefense.training import fit

    data = ImageSet(torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (64,)))
    history = fit(build_model("resnet_small", 1, 3, 4), data,
                  FitConfig(epochs=1, batch_size=32, lr=0.05, precision="fp32", min_steps=6), torch.device("cpu"), 0)
    assert len(history) == 3  # 2 steps an epoch: 3 epochs reach 6 steps
