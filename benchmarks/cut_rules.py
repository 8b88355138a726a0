"""Benchmark: candidate rules for the final cut (defenses/modes.py), read off saved quarantine scores.

No training: every workspace that ran the isolate stage keeps its final scores
(`data/isolation/isolated.npz`, or `scores-<commit>.npz` from benchmarks/isolation_cells.py) and
its truth (`data/truth`). Each rule cuts the labels that run flagged, and is scored against the
truth. A rule that wins on some score sets and loses on others is no better; the table shows which.

    .venv/bin/python benchmarks/cut_rules.py                 # every workspace under ~/.cache/ptdefense
    .venv/bin/python benchmarks/cut_rules.py --out benchmarks/results/cut_rules.json

Rules (each cuts from the log-odds where the upper part's posterior reaches `mode_posterior`):
- `two_full`: the committed rule, two components with their own spreads (modes.upper_mode);
- `two_tied`: two components with one shared spread;
- `bic_split`: 1 to 4 components, as many as BIC picks; the upper part is the components above the
  split between neighbours whose merged groups are furthest apart (Ashman's D).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ptdefense.defenses.modes import SEPARATION, log_odds, upper_mode  # noqa: E402

CACHE = Path.home() / ".cache" / "ptdefense"
POSTERIOR = 0.03


def mixture(values: np.ndarray, components: int, covariance: str = "full"):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(components, covariance_type=covariance, n_init=3, reg_covar=1e-3,
                           random_state=0).fit(values.reshape(-1, 1))


def cut_between(model, upper: np.ndarray, low: float, high: float) -> float:
    """The lowest log-odds between `low` and `high` where the `upper` components' posterior reaches POSTERIOR."""
    grid = np.linspace(low, high, 2001).reshape(-1, 1)
    reached = model.predict_proba(grid)[:, upper].sum(1) >= POSTERIOR
    return float(grid[int(np.argmax(reached)), 0]) if reached.any() else high


def two_full(values: np.ndarray) -> float | None:
    result = upper_mode(torch.sigmoid(torch.from_numpy(values)), POSTERIOR, 0)
    return result["cut"] if result["separated"] else None


def two_tied(values: np.ndarray) -> float | None:
    model = mixture(values, 2, "tied")
    means = model.means_.ravel()
    low, high = int(np.argmin(means)), int(np.argmax(means))
    if (means[high] - means[low]) / np.sqrt(model.covariances_.ravel()[0]) <= SEPARATION:
        return None
    return cut_between(model, np.array([high]), means[low], means[high])


def merged(means: np.ndarray, spreads: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """One Gaussian with the same mean and variance as a group of components."""
    mean = float((weights * means).sum() / weights.sum())
    variance = float((weights * (spreads ** 2 + means ** 2)).sum() / weights.sum()) - mean ** 2
    return mean, float(np.sqrt(max(variance, 1e-12)))


def bic_split(values: np.ndarray) -> float | None:
    models = [mixture(values, components) for components in range(1, 5)]
    model = min(models, key=lambda fitted: fitted.bic(values.reshape(-1, 1)))
    if model.n_components == 1:
        return None
    order = np.argsort(model.means_.ravel())
    means, weights = model.means_.ravel()[order], model.weights_[order]
    spreads = np.sqrt(model.covariances_.ravel()[order])
    separations = []
    for split in range(1, model.n_components):
        (low_mean, low_spread), (high_mean, high_spread) = (merged(means[:split], spreads[:split], weights[:split]),
                                                            merged(means[split:], spreads[split:], weights[split:]))
        separations.append((high_mean - low_mean) / np.sqrt((low_spread ** 2 + high_spread ** 2) / 2))
    split = int(np.argmax(separations)) + 1
    if separations[split - 1] <= SEPARATION:
        return None
    return cut_between(model, order[split:], means[split - 1], means[split])


RULES = {"two_full": two_full, "two_tied": two_tied, "bic_split": bic_split}


def score_sets() -> list[dict]:
    """Every saved score set: its scores, labels, poison mask and the labels its run flagged."""
    found = []
    for path in sorted(CACHE.glob("isolation-cells/*/*/scores-*.npz")):
        saved = np.load(path)
        poison = np.zeros(saved["scores"].size, dtype=bool)
        poison[saved["poison"]] = True
        flagged = sorted(set(saved["labels"][saved["isolated"]].tolist()))
        found.append({"name": str(path.relative_to(CACHE)), "scores": saved["scores"], "labels": saved["labels"],
                      "poison": poison, "flagged": flagged})
    for workspace in sorted(CACHE.glob("robustness/*/*")) + [ROOT]:
        isolated, metrics = workspace / "data/isolation/isolated.npz", workspace / "metrics/isolate.json"
        truth = workspace / "data/truth/poison_indices.npz"
        if not (isolated.is_file() and metrics.is_file() and truth.is_file()):
            continue
        saved, details = np.load(isolated), json.loads(metrics.read_text())
        labels = np.load(workspace / "data/poisoned/train.npz")["labels"]
        poison = np.zeros(labels.size, dtype=bool)
        indices = np.load(truth)
        poison[indices[indices.files[0]]] = True
        flagged = sorted({int(label) for label in details.get("modes", {})}
                         | set(labels[saved["isolated_indices"]].tolist()))
        if flagged and poison.any():
            found.append({"name": str(workspace.relative_to(CACHE)) if workspace != ROOT else "this checkout",
                          "scores": saved["suspicion_scores"], "labels": labels, "poison": poison,
                          "flagged": flagged})
    return found


def evaluate(rule, score_set: dict) -> dict:
    values = log_odds(torch.from_numpy(np.asarray(score_set["scores"], dtype=np.float64))).numpy()
    chosen = np.zeros(values.size, dtype=bool)
    for label in score_set["flagged"]:
        members = (score_set["labels"] == label) & (score_set["scores"] > 0)
        if members.sum() < 20:
            continue
        cut = rule(values[members])
        if cut is not None:
            chosen |= members & (values >= cut)
    poison = score_set["poison"]
    hits = int((chosen & poison).sum())
    return {"isolated": int(chosen.sum()), "precision": hits / max(1, int(chosen.sum())),
            "recall": hits / max(1, int(poison.sum())), "fpr": int((chosen & ~poison).sum()) / int((~poison).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # scikit-learn's convergence notes on tiny components
    results = []
    print("| score set | flagged | " + " | ".join(f"{name}: n, P/R/FPR %" for name in RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    for score_set in score_sets():
        row = {"score_set": score_set["name"], "flagged": score_set["flagged"],
               **{name: evaluate(rule, score_set) for name, rule in RULES.items()}}
        results.append(row)
        print(f"| {row['score_set']} | {len(row['flagged'])} | " + " | ".join(
            f"{row[name]['isolated']}, {100 * row[name]['precision']:.1f}/{100 * row[name]['recall']:.1f}/"
            f"{100 * row[name]['fpr']:.2f}" for name in RULES) + " |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"posterior": POSTERIOR, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
