"""PT's verdict on a training set: poison_found, inconclusive or no_poison_found, with its statistic.

The statistic is each label's outlier score against the other labels, for the two signs of poison
that isolation reads off the partial model (defenses/isolation.py): the diversity gap (dirty-label
poison) and the log spectral ratio (clean-label poison).

Null model: with no poison, the labels are exchangeable, so a label's statistic is one more draw
from the distribution of the others. That distribution's centre and spread are estimated robustly
from the other labels (median and MAD, so that a poisoned label cannot hide itself by inflating
them), and the label's modified z-score is (x − median) / (1.4826 · MAD) (Iglewicz and Hoaglin,
1993), one-sided because poison raises both statistics. Under a normal null, z ≥ 3 has a one-sided
probability of 0.13% per label and statistic: with 10 labels and 2 statistics, a clean set scores
z ≥ 3 somewhere with probability 2.7% (Bonferroni: at most 20 × 0.13%). Real classes are less
exchangeable than that (Fashion-MNIST's sandals score 4.7 on the diversity gap in a poisoned run),
so a clean set may come out inconclusive; it is never called poisoned unless isolation finds poison.

- poison_found: isolation isolated samples (it only does from labels its tests flagged).
- no_poison_found: nothing isolated, and every label's z-score of both statistics lies below
  `clear_z`: no label stands out from the others at all.
- inconclusive: nothing isolated, yet some label stands out (z ≥ `clear_z`), or a label was flagged
  and then cleared for want of confident seeds. The reason names the label and its score. A set
  whose backdoor the partial model learnt but isolation missed lands here, not in "no poison".
"""

from __future__ import annotations

import math
import statistics

POISON_FOUND, INCONCLUSIVE, NO_POISON_FOUND = "poison_found", "inconclusive", "no_poison_found"
MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of a normal distribution


def outlier_scores(values: dict[str, float]) -> dict[str, float]:
    """Each label's modified z-score against the other labels' median and MAD (leave one out)."""
    scores = {}
    for label, value in values.items():
        others = [other for key, other in values.items() if key != label]
        if len(others) < 2:
            scores[label] = 0.0
            continue
        centre = statistics.median(others)
        spread = MAD_TO_SIGMA * statistics.median(abs(other - centre) for other in others)
        if spread <= 1e-12:  # the others are all equal: fall back to their standard deviation
            spread = statistics.pstdev(others) or 1e-12
        scores[label] = (value - centre) / spread
    return scores


def verdict(details: dict, isolated_count: int, clear_z: float = 3.0) -> dict:
    """The verdict, its statistic (the largest z-score and where it is), the threshold and the reason.

    `details` is isolation's: `diversity_gap` and `spectral_ratio` per label, and `cleared_classes`.
    """
    gap_z = outlier_scores(details.get("diversity_gap", {}))
    spectral_z = outlier_scores({label: math.log(max(ratio, 1e-12))
                                 for label, ratio in details.get("spectral_ratio", {}).items()})
    candidates = [(z, label, "diversity gap") for label, z in gap_z.items()]
    candidates += [(z, label, "spectral ratio") for label, z in spectral_z.items()]
    top_z, top_label, top_statistic = max(candidates, default=(0.0, None, None))
    summary = {"verdict_statistic": top_statistic, "verdict_label": top_label, "verdict_z": top_z,
               "verdict_clear_z": clear_z, "diversity_gap_z": gap_z, "spectral_ratio_z": spectral_z}
    if isolated_count:
        flagged = details.get("suspicious_classes", [])
        return {"verdict": POISON_FOUND, **summary,
                "verdict_reason": f"{isolated_count} samples isolated from label(s) {flagged}"}
    cleared = details.get("cleared_classes", [])
    if cleared:
        reason = (f"label(s) {cleared} showed a sign of poison but no confidently low-loss samples to seed the "
                  "quarantine class, so nothing was isolated")
        return {"verdict": INCONCLUSIVE, **summary, "verdict_reason": reason}
    if top_label is not None and top_z >= clear_z:
        reason = (f"nothing isolated, but label {top_label}'s {top_statistic} stands {top_z:.1f} robust standard "
                  f"deviations above the other labels' (≥ {clear_z:g}): poison the partial model learnt too weakly "
                  "to isolate looks like this")
        return {"verdict": INCONCLUSIVE, **summary, "verdict_reason": reason}
    if top_label is None:
        return {"verdict": INCONCLUSIVE, **summary,
                "verdict_reason": "no label had enough samples (20) for the statistics"}
    reason = (f"nothing isolated, and no label stands out: the largest score is label {top_label}'s {top_statistic}, "
              f"{top_z:.1f} robust standard deviations (< {clear_z:g})")
    return {"verdict": NO_POISON_FOUND, **summary, "verdict_reason": reason}


def verdict_markdown(result: dict) -> str:
    """reports/verdict.md: the verdict, its reason, and every label's two scores."""
    lines = [f"# Verdict: {result['verdict']}", "", result["verdict_reason"] + ".", "",
             f"Statistic: each label's modified z-score against the other labels (threshold for a clear set: "
             f"{result['verdict_clear_z']:g}). The isolated samples, most suspicious first: `reports/suspects.csv`.",
             "", "| label | diversity gap z | spectral ratio z |", "|---|---|---|"]
    for label in sorted(result["diversity_gap_z"], key=int):
        lines.append(f"| {label} | {result['diversity_gap_z'][label]:.2f} "
                     f"| {result['spectral_ratio_z'].get(label, float('nan')):.2f} |")
    return "\n".join(lines) + "\n"
