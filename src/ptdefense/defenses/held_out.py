"""The quarantine test's statistics (defenses/quarantine.py): is a candidate's held-out half of
seeds quarantined more often than its controls, and, for seeds from a label's low-loss mode, more
often than a label with no sign of poison manages with its own low-loss mode?

The held-out test. Null model: half B is quarantined no more often than the controls. One-sided
Fisher exact test at the level given, and a majority of half B quarantined, the effect a trigger has.

The empirical null (`against_null`), for candidates seeded from their low-loss mode (clean-label
poison: nominated by the loss statistics alone), unless `easy_tail` nominated them
(seeding.judged_against_null says why). That mode may be a natural easy sub-population,
and half B then shares it with half A: the quarantine class takes it more often than controls of
the same content, with no trigger at all, the more so when a few seeds are repeated up to
`quarantine_share`. Measured on Fashion-MNIST 60k, Blend 1% (`d3426ca`): sandals (label 5, no
poison), nominated by `diversity_gap` alone, 94 trained seeds used 5 times, were quarantined 62/94 against
23/94 matched controls (p 8e-9, a majority) and confirmed; 4,045 clean sandals were isolated and
PT's sandal test accuracy fell to 31.3%.
So the labels that no statistic nominated (the null labels) are seeded from their own low-loss
modes, half of each trained into the same quarantine class, and each tested like the candidate,
half B against content-matched controls. The statistic is the log odds ratio of the 2 × 2 table
(half B quarantined or not, controls quarantined or not; +0.5 in each cell, Haldane). Null model:
with no trigger, the candidate's mode is one more natural sub-population, so its log odds ratio is
one more draw from the null labels' (labels exchangeable, as in defenses/signs.py); the candidate
passes when its modified z-score against them reaches `flag_z`. On that Blend 1% set, nine clean
labels' modes in one model (an exploratory run, not the stage): odds ratios 0.9 to 2.4, sandals 1.5.
With fewer than MIN_NULL_LABELS null labels to compare with, the effect cannot be judged and the
candidate is not confirmed (the verdict then says inconclusive, with the reason).
"""

from __future__ import annotations

import math

import torch

from ptdefense.defenses.verdict import modified_z

MIN_HELD_OUT = 5  # fewer held-out seeds than this: the test cannot confirm the label
MIN_NULL_LABELS = 3  # fewer null labels than this: no spread to judge a low-loss-mode candidate's effect against


def more_often_p_value(hits: int, count: int, control_hits: int, control_count: int) -> float:
    """One-sided Fisher exact test: p-value of "hits/count is no larger a share than control_hits/control_count"."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[hits, count - hits], [control_hits, control_count - control_hits]],
                              alternative="greater")[1])


def held_out_test(quarantined: torch.Tensor, held_seeds: torch.Tensor, controls: torch.Tensor,
                  alpha: float) -> dict:
    """Is the held-out half of a label's seeds quarantined more often than its other held-out samples?"""
    seed_hits, control_hits = int(quarantined[held_seeds].sum()), int(quarantined[controls].sum())
    seed_count, control_count = held_seeds.numel(), controls.numel()
    result = {"held_out_seeds": seed_count, "held_out_seeds_quarantined": seed_hits,
              "controls": control_count, "controls_quarantined": control_hits}
    if seed_count < MIN_HELD_OUT or control_count == 0:
        return {**result, "p_value": 1.0, "confirmed": False,
                "reason": f"too few held-out seeds ({seed_count} < {MIN_HELD_OUT}) or no controls to test"}
    p_value = more_often_p_value(seed_hits, seed_count, control_hits, control_count)
    majority = seed_hits * 2 > seed_count
    confirmed = p_value <= alpha and majority
    reason = ("confirmed: the held-out seeds share what the quarantine class learnt" if confirmed else
              f"cleared: held-out seeds quarantined {seed_hits}/{seed_count}, controls {control_hits}/{control_count}, "
              f"p={p_value:.2g} (needs p ≤ {alpha:.2g} and a majority)")
    return {**result, "p_value": p_value, "confirmed": confirmed, "reason": reason}


def leads(test: dict) -> bool:
    """Did a cleared candidate's held-out seeds go to the quarantine class more often than its controls?"""
    if test.get("held_out_seeds", 0) < MIN_HELD_OUT or not test.get("controls"):
        return False
    return test["held_out_seeds_quarantined"] / test["held_out_seeds"] > test["controls_quarantined"] / test["controls"]


def log_odds_ratio(test: dict) -> float:
    """log of (half B quarantined : not) over (controls quarantined : not), each count + 0.5 (Haldane)."""
    hits, misses = test["held_out_seeds_quarantined"], test["held_out_seeds"] - test["held_out_seeds_quarantined"]
    control_hits, control_misses = test["controls_quarantined"], test["controls"] - test["controls_quarantined"]
    return math.log((hits + 0.5) * (control_misses + 0.5) / ((misses + 0.5) * (control_hits + 0.5)))


def against_null(test: dict, null_tests: dict[int, dict], flag_z: float) -> dict:
    """The candidate's held-out test, judged again against the null labels' (the module's story):
    confirmed only if it was, and its log odds ratio's modified z-score against theirs reaches flag_z."""
    usable = {label: null for label, null in null_tests.items()
              if null["held_out_seeds"] >= MIN_HELD_OUT and null["controls"]}
    effect = log_odds_ratio(test)
    figures = {"log_odds_ratio": effect, "null_labels": sorted(usable),
               "null_log_odds_ratios": [log_odds_ratio(usable[label]) for label in sorted(usable)]}
    if len(usable) < MIN_NULL_LABELS:
        reason = (f"not confirmed: {len(usable)} labels without a sign of poison to compare its effect with "
                  f"(< {MIN_NULL_LABELS}), and its low-loss mode may be a natural sub-population")
        return {**test, **figures, "null_z": None, "confirmed": False,
                "reason": reason if test["confirmed"] else test["reason"] + "; " + reason}
    z = modified_z(effect, figures["null_log_odds_ratios"])
    confirmed = test["confirmed"] and z >= flag_z
    judged = (f"log odds ratio {effect:.2f}, {z:.1f} robust standard deviations from the {len(usable)} labels "
              f"without a sign of poison, seeded the same way (needs ≥ {flag_z:g})")
    reason = ("confirmed: its held-out seeds share what the quarantine class learnt, beyond a natural "
              f"sub-population ({judged})" if confirmed else
              f"cleared: {judged}" if test["confirmed"] else f"{test['reason']}; {judged}")
    return {**test, **figures, "null_z": z, "confirmed": confirmed, "reason": reason}
