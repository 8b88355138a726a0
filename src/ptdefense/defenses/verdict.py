"""PT's verdict on a training set: poison_found, inconclusive or no_poison_found, with its statistic.

The statistics are each label's outlier scores against the other labels, for the five signs of
poison that isolation reads off the partial model (defenses/signs.py): content disagreement, easy
disagreement, the diversity gap, the log spectral ratio and the easy tail.

Null model: with no poison, the labels are exchangeable, so a label's statistic is one more draw
from the distribution of the others. That distribution's centre and spread are estimated robustly
from the other labels (median and MAD, so that a poisoned label cannot hide itself by inflating
them), and the label's modified z-score is (x − median) / (1.4826 · MAD) (Iglewicz and Hoaglin,
1993), one-sided because poison raises every statistic. Under a normal null, z ≥ 3 has a one-sided
probability of 0.13% per label and statistic. Real classes are less exchangeable than that, so a
clean set may come out inconclusive; it is called poisoned only when a label passes isolation's
held-out quarantine test (defenses/quarantine.py), whose null model is stated there.

- poison_found: isolation confirmed a label and isolated samples from it, or the pooled test
  (defenses/pooled.py) found a trigger shared across the labels and isolated its samples.
- no_poison_found: nothing isolated, no candidate label, and every label's z-score of every
  statistic lies below `clear_z`: no label stands out from the others at all.
- inconclusive: nothing isolated, yet some label stands out (z ≥ `clear_z`), or a candidate failed
  the quarantine test, or a flagged label's scores formed no separate mode (defenses/modes.py).
  The reason names the label and its figures. A set whose backdoor the partial model learnt but
  isolation missed lands here, not in "no poison".
"""

from __future__ import annotations

import statistics

POISON_FOUND, INCONCLUSIVE, NO_POISON_FOUND = "poison_found", "inconclusive", "no_poison_found"
MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of a normal distribution


def modified_z(value: float, others: list[float]) -> float:
    """`value`'s modified z-score against `others` (their median and MAD; 0 with fewer than two)."""
    if len(others) < 2:
        return 0.0
    centre = statistics.median(others)
    spread = MAD_TO_SIGMA * statistics.median(abs(other - centre) for other in others)
    if spread <= 1e-12:  # the others are all equal: fall back to their standard deviation
        spread = statistics.pstdev(others) or 1e-12
    return (value - centre) / spread


def outlier_scores(values: dict[str, float]) -> dict[str, float]:
    """Each label's modified z-score against the other labels' median and MAD (leave one out)."""
    return {label: modified_z(value, [other for key, other in values.items() if key != label])
            for label, value in values.items()}


def verdict(details: dict, isolated_count: int, clear_z: float = 3.0) -> dict:
    """The verdict, its statistic (the largest z-score and where it is), the threshold and the reason.

    `details` is isolation's: `z` (statistic → label → z-score), `candidates`, `confirmation`,
    `suspicious_classes` (the labels isolated from), `unseparated_classes` and `modes`."""
    scores: dict[str, dict[str, float]] = details.get("z", {})
    ranked = [(z, label, name) for name, by_label in scores.items() for label, z in by_label.items()]
    top_z, top_label, top_statistic = max(ranked, default=(0.0, None, None))
    summary = {"verdict_statistic": top_statistic, "verdict_label": top_label, "verdict_z": top_z,
               "verdict_clear_z": clear_z, "z": scores}
    pooled = details.get("pooled_test", {})
    if isolated_count:
        confirmed = details.get("suspicious_classes", [])
        tests = details.get("confirmation", {})
        passed = [label for label in confirmed if tests.get(str(label), {}).get("confirmed")]
        figures = "; ".join(f"label {label}: held-out seeds quarantined {tests[str(label)]['held_out_seeds_quarantined']}"
                            f"/{tests[str(label)]['held_out_seeds']}, its other samples "
                            f"{tests[str(label)]['controls_quarantined']}/{tests[str(label)]['controls']}, "
                            f"p={tests[str(label)]['p_value']:.2g}" for label in passed)
        if pooled.get("confirmed"):  # the pooled test (after any per-label isolation) found more
            also = f"; and per label: {figures}" if figures else ""
            reason = (f"{isolated_count} samples isolated from label(s) {confirmed} by the pooled test, poison "
                      f"spread over the labels ({pooled['reason']}){also}")
        else:
            reason = f"{isolated_count} samples isolated from label(s) {confirmed} ({figures})"
        return {"verdict": POISON_FOUND, **summary, "verdict_reason": reason + unseparated_note(details)}
    cleared = left_whole(details)
    reasons = [f"label {label} stood out but was {' and '.join(why)}" for label, why in cleared.items()]
    if pooled.get("confirmed") and not details.get("unseparated_classes"):
        reasons.append(f"the pooled test found a trigger shared across the labels ({pooled['reason']}), but its "
                       "last round put no sample above the threshold")
    if reasons:
        return {"verdict": INCONCLUSIVE, **summary, "verdict_reason": "; ".join(reasons)}
    if top_label is not None and top_z >= clear_z:
        reason = (f"nothing isolated, but label {top_label}'s {top_statistic.replace('_', ' ')} stands {top_z:.1f} "
                  f"robust standard deviations above the other labels' (≥ {clear_z:g}): poison the partial model "
                  "learnt too weakly to isolate looks like this")
        return {"verdict": INCONCLUSIVE, **summary, "verdict_reason": reason}
    if top_label is None:
        return {"verdict": INCONCLUSIVE, **summary,
                "verdict_reason": "no label had enough samples (20) for the statistics"}
    reason = (f"nothing isolated, and no label stands out: the largest score is label {top_label}'s "
              f"{top_statistic.replace('_', ' ')}, {top_z:.1f} robust standard deviations (< {clear_z:g})")
    return {"verdict": NO_POISON_FOUND, **summary, "verdict_reason": reason}


def left_whole(details: dict) -> dict[str, list[str]]:
    """Why each label that stood out kept all its samples: cleared by the quarantine test, or flagged
    (by that test or by the pooled one) with scores that formed no separate mode; one entry per label."""
    tests = details.get("confirmation", {})
    reasons = {label: [test.get("reason", "")] for label, test in tests.items() if not test.get("confirmed")}
    for label in details.get("unseparated_classes", []):
        how = "it passed the quarantine test" if tests.get(str(label), {}).get("confirmed") else \
            "the pooled test flagged it"
        reasons.setdefault(str(label), []).append(f"left whole: {how}, but {details['modes'][str(label)]['reason']}")
    return reasons


def unseparated_note(details: dict) -> str:
    """The flagged labels that isolated nothing because their scores form no separate mode (defenses/modes.py)."""
    labels = details.get("unseparated_classes", [])
    return "".join(f"; label {label} was flagged, but {details['modes'][str(label)]['reason']}: nothing isolated "
                   "from it" for label in labels)


def verdict_markdown(result: dict) -> str:
    """reports/verdict.md: the verdict, its reason, and every label's scores."""
    names = sorted(result["z"])
    lines = [f"# Verdict: {result['verdict']}", "", result["verdict_reason"] + ".", "",
             f"Statistic: each label's modified z-score against the other labels (threshold for a clear set: "
             f"{result['verdict_clear_z']:g}). The isolated samples, most suspicious first: `reports/suspects.csv`.",
             "", "| label | " + " | ".join(f"{name.replace('_', ' ')} z" for name in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    labels = sorted({label for by_label in result["z"].values() for label in by_label}, key=int)
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(f"{result['z'][name].get(label, float('nan')):.2f}" for name in names)
                     + " |")
    return "\n".join(lines) + "\n"
