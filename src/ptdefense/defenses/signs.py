"""Signs of poison per label, read off the partial model, and the labels that stand out.

Five statistics per label, each one number that poison raises:
- `content_disagreement`: the share of its samples whose content (the frozen prefix's nearest
  neighbours) points to another label (defenses/content.py). Dirty-label poison, any trigger;
- `easy_disagreement`: the share that disagree *and* are fitted as easily as the label's agreeing
  samples: the trigger carries them;
- `diversity_gap`: runner-up diversity of the label's easiest tenth minus its hardest half;
- `log_spectral_ratio`: log (σ1/σ2)² of the label's penultimate features (Tran et al., 2018), the
  clean-label attacks' sign: the partial model learns the trigger first, so the features of the
  label spread along one direction, trigger present or not;
- `easy_tail`: −log10 of the loss at the label's `EASY_TAIL_QUANTILE` (its easiest twentieth):
  how easily the label's easiest samples are fitted. A trigger is fitted far more easily than any
  content, so dirty-label poison sits orders of magnitude below its label's clean samples, even
  where the frozen prefix's content view is too weak to show it (CIFAR-10 10k, BadNets 10%: the
  poison's median loss 0.025 against 0.75 for clean samples, while 63% of the clean samples'
  content disagreed with their labels). Measured z-scores (partial models of the isolation cells):
  the poisoned label 6.1 on CIFAR-10 10k, 7.2 on MNIST 4k BadNets and MNIST 5k Blend; every label
  of clean MNIST 4k and 5k below 1.7. On Fashion-MNIST some clean classes are fitted as easily as
  poison, so it misses the target there and may nominate a clean label (trousers at z 4.6 in a
  WaNet run); the content statistics carry those sets, and a label it alone nominates is tested
  only when no other candidate is confirmed (isolation.confirm_in_turn).

Null model (the same as the verdict's, defenses/verdict.py): with no poison the labels are
exchangeable, so each label's statistic is one more draw from the other labels' distribution,
whose centre and spread are estimated robustly (median, MAD). A label is a *candidate* when one of
its modified z-scores reaches `flag_z` (3.5, Iglewicz and Hoaglin's outlier cut). Real classes are
less exchangeable than the null says (MNIST's 8 disagrees with its neighbours at z 4.3 in a
BadNets run), so a candidate is isolated from only after the quarantine test confirms it
(defenses/quarantine.py): a statistic nominates, it does not decide.
"""

from __future__ import annotations

import math

import torch

from ptdefense.defenses.verdict import outlier_scores

MIN_LABEL_SIZE = 20  # fewer samples than this: no statistic for the label
CONTENT_STATISTICS = ("content_disagreement", "easy_disagreement")
LOSS_STATISTICS = ("diversity_gap", "log_spectral_ratio", "easy_tail")
EASY_TAIL_QUANTILE = 0.05  # poison above ~5% of its label shows (1% of a 10-class set is ~9% of the target)
# The least specific signs: a label that only these nominate is tested last (isolation.confirm_in_turn).
FALLBACK_STATISTICS = ("easy_tail",)


def spectral_ratio(features: torch.Tensor) -> float:
    """(σ1 / σ2)² of a set's centred features: how much one direction dominates their spread."""
    singular = torch.linalg.svdvals((features - features.mean(0)).double())
    return float(singular[0] ** 2 / singular[1].clamp(min=1e-12) ** 2)


def runner_up_diversity(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Normalised entropy (0..1) of the runner-up class over a set of samples.

    Samples of a clean class are confused with a few similar classes (a T-shirt with a shirt), so
    their runner-up classes concentrate. Dirty-label poison carries the content of many classes
    under one label, so its runner-ups spread over all of them.
    """
    masked = logits.clone()
    masked[torch.arange(labels.numel()), labels] = float("-inf")
    counts = torch.bincount(masked.argmax(1), minlength=num_classes).float()
    shares = counts[counts > 0] / counts.sum()
    entropy = float(-(shares * shares.log()).sum())
    return entropy / float(torch.log(torch.tensor(float(max(2, num_classes - 1)))))


def diversity_gap(logits: torch.Tensor, losses: torch.Tensor, labels: torch.Tensor, label: int,
                  num_classes: int) -> float:
    """Runner-up diversity of a label's easiest tenth minus that of its hardest half.

    Dirty-label poison is the easiest part of its label and carries many classes' content: a large
    positive gap. Comparing a label with itself cancels what is natural to a class.
    """
    members = torch.nonzero(labels == label).flatten()
    ordered = members[torch.sort(losses[members], stable=True).indices]
    easiest, hardest = ordered[: max(1, ordered.numel() // 10)], ordered[ordered.numel() // 2:]
    return (runner_up_diversity(logits[easiest], labels[easiest], num_classes)
            - runner_up_diversity(logits[hardest], labels[hardest], num_classes))


def easy_tail(losses: torch.Tensor) -> float:
    """−log10 of the EASY_TAIL_QUANTILE of a label's per-sample losses (floored at 1e-12)."""
    return -float(torch.quantile(losses.double().clamp(min=1e-12).log10(), EASY_TAIL_QUANTILE))


def label_statistics(logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     content_shares: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every statistic, per label with at least MIN_LABEL_SIZE samples."""
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    statistics: dict[str, dict[str, float]] = {name: {} for name in CONTENT_STATISTICS + LOSS_STATISTICS}
    for label in range(num_classes):
        members = labels == label
        if int(members.sum()) < MIN_LABEL_SIZE:
            continue
        key = str(label)
        for name in CONTENT_STATISTICS:
            statistics[name][key] = content_shares[name][key]
        statistics["diversity_gap"][key] = diversity_gap(logits, losses, labels, label, num_classes)
        statistics["log_spectral_ratio"][key] = math.log(max(spectral_ratio(features[members]), 1e-12))
        statistics["easy_tail"][key] = easy_tail(losses[members])
    return statistics


def candidate_labels(statistics: dict[str, dict[str, float]], flag_z: float) -> tuple[dict[int, list[str]], dict]:
    """{label: the statistics whose z-score reached flag_z}, and every z-score (statistic → label → z)."""
    scores = {name: outlier_scores(values) for name, values in statistics.items()}
    candidates: dict[int, list[str]] = {}
    for name, by_label in scores.items():
        for label, z in by_label.items():
            if z >= flag_z:
                candidates.setdefault(int(label), []).append(name)
    return dict(sorted(candidates.items())), scores
