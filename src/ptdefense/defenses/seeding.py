"""Which samples seed a candidate label's quarantine class, and which stand against them in the
held-out test (defenses/quarantine.py tells the test's story).

A candidate's seeds come from one of three places (`seeding_kind`), and that decides its controls,
whether it may be tested again, and whether the labels no statistic nominated judge it:
- CONTENT: a content statistic nominated it, and its seeds are its samples whose content disagrees
  with the label. They share nothing but a trigger, so any of its other samples is a control
  (`control_sample`), and later passes may leave out the poison that competed with them
  (`retestable`).
- LOW_LOSS_MODE: the loss statistics alone nominated it (clean-label poison), and its seeds are its
  low-loss mode. That mode may be a natural easy sub-population, so its controls are matched in
  content (`content_matched_controls`), and unless `easy_tail` nominated it, it is judged against
  the labels no statistic nominated, seeded the same way (`null_label_splits`,
  `judged_against_null`).
- FIXED_COUNT (method quarantine): its `seed_count` lowest-loss samples, with random controls.
"""

from __future__ import annotations

import torch

from ptdefense.defenses.content import matched_controls
from ptdefense.defenses.held_out import MIN_HELD_OUT
from ptdefense.defenses.signs import CONTENT_STATISTICS, FALLBACK_STATISTICS

CONTENT, LOW_LOSS_MODE, FIXED_COUNT = "content", "low_loss_mode", "fixed_count"
CONTROL_SHARE = 0.2  # of a candidate's other samples, held out of round 1 as the test's controls


def low_loss_mode_posterior(losses: torch.Tensor, seed: int) -> torch.Tensor:
    """Each loss's posterior probability of belonging to the low-loss mode of a two-component
    Gaussian mixture on log-loss (scikit-learn's GaussianMixture): poison that the partial model has
    learnt sits orders of magnitude below its label's clean samples, so no poison rate is assumed."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    if losses.numel() < 4:
        return torch.zeros(losses.numel(), dtype=torch.float64)
    values = losses.double().clamp(min=1e-12).log10().numpy().reshape(-1, 1)
    mixture = GaussianMixture(n_components=2, n_init=3, random_state=seed).fit(values)
    low = int(np.argmin(mixture.means_.ravel()))
    return torch.from_numpy(mixture.predict_proba(values)[:, low])


def label_seeds(members: torch.Tensor, reasons: list[str], losses: torch.Tensor, easy: torch.Tensor | None,
                seed_confidence: float, seed: int, seed_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A candidate label's seeds (lowest loss first) and as many anchors (its highest-loss samples).
    `seed_count` (method quarantine) fixes the count: the label's lowest-loss samples. No content
    statistic in `reasons` (a null label's: none): the low-loss mode, `easy` unused."""
    ordered = members[torch.sort(losses[members], stable=True).indices]
    cap = members.numel() // 4
    kind = seeding_kind(reasons, seed_count)
    if kind == FIXED_COUNT:
        seeds = ordered[:min(seed_count, cap)]
    elif kind == CONTENT:
        seeds = ordered[easy[ordered]][:cap]
    else:
        confident = int((low_loss_mode_posterior(losses[members], seed) >= seed_confidence).sum())
        seeds = ordered[:min(confident, cap)]
    anchors = ordered[ordered.numel() - seeds.numel():] if seeds.numel() else ordered[:0]
    return seeds, anchors


def control_sample(labels: torch.Tensor, label: int, seeds: torch.Tensor, anchors: torch.Tensor, seed: int,
                   share: float = CONTROL_SHARE) -> torch.Tensor:
    """A seeded random `share` of the label's samples that are neither seed nor anchor."""
    members = labels == label
    members[seeds] = False
    members[anchors] = False
    others = torch.nonzero(members).flatten()
    order = torch.randperm(others.numel(), generator=torch.Generator().manual_seed(seed))
    return torch.sort(others[order[:max(1, round(share * others.numel()))]]).values if others.numel() else others


def content_matched_controls(content: torch.Tensor, labels: torch.Tensor, label: int, seeds: torch.Tensor,
                             anchors: torch.Tensor, half_b: torch.Tensor) -> torch.Tensor:
    """For each held-out seed, the nearest of its label's other samples (neither seed nor anchor) in
    the frozen prefix's content view, each used once.

    Why, for seeds from the label's low-loss mode: that mode may be a natural easy sub-population
    (plain sandals, flat trousers), and then half B shares it with half A and is quarantined more
    often than a random control, with no trigger at all. Measured on Fashion-MNIST 60k, Blend 10%
    (`03deb0f`): sandals, nominated by diversity_gap alone, were confirmed with random controls
    (80/143 held-out seeds against 55/951 controls), and 3,373 clean sandals were isolated; PT's
    clean accuracy fell to 83.62% against the clean reference's 90.91%. A control of the same
    content shares that sub-population; it does not share a trigger."""
    eligible = labels == label
    eligible[seeds] = False
    eligible[anchors] = False
    return matched_controls(content, half_b, eligible)


def null_label_splits(labels: torch.Tensor, null_labels: list[int], losses: torch.Tensor, content: torch.Tensor,
                      seed_confidence: float, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each label no statistic nominated, seeded like a low-loss-mode candidate: (half A, to train
    into the quarantine class; half B, held out; half B's content-matched controls). Labels whose
    mode is too thin to hold out MIN_HELD_OUT seeds are left out (held_out.py, the empirical null)."""
    splits = {}
    for label in null_labels:
        seeds, anchors = label_seeds(torch.nonzero(labels == label).flatten(), [], losses, None, seed_confidence, seed)
        if seeds.numel() // 2 >= MIN_HELD_OUT:
            half_a, half_b = split_halves(seeds, seed + label)
            splits[label] = (half_a, half_b, content_matched_controls(content, labels, label, seeds, anchors, half_b))
    return splits


def split_halves(indices: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(indices.numel(), generator=torch.Generator().manual_seed(seed))
    shuffled = indices[order]
    half = (shuffled.numel() + 1) // 2
    return shuffled[:half], shuffled[half:]


def seeding_kind(reasons: list[str], seed_count: int | None) -> str:
    """Where a candidate's seeds come from (label_seeds): FIXED_COUNT, its lowest-loss samples
    (`seed_count` set, method quarantine); CONTENT, its samples whose content disagrees with the label
    (a content statistic nominated it); else LOW_LOSS_MODE, its low-loss mode (the loss statistics
    alone nominated it: clean-label poison, whose content matches its label)."""
    if seed_count is not None:
        return FIXED_COUNT
    return CONTENT if any(reason in CONTENT_STATISTICS for reason in reasons) else LOW_LOSS_MODE


def judged_against_null(reasons: list[str], seed_count: int | None) -> bool:
    """Is a candidate judged against the null labels (held_out.against_null)? When seeded from its
    low-loss mode and not nominated by `easy_tail`: that sign says the label's easiest samples are
    fitted orders of magnitude more easily than the other labels' are, which the null labels' modes,
    by construction, are not. Measured on CIFAR-10 10k, BadNets 10% (`16468b1`): the target,
    nominated by `easy_tail` alone, was cleared by the null (z 1.3; 196/210 held-out seeds against
    143/210 matched controls, the controls mostly poison beyond the seed cap; the nine null labels'
    log odds ratios −1.1 to 2.4, on a set where the models reach about 65% clean accuracy), and
    nothing was isolated."""
    return seeding_kind(reasons, seed_count) == LOW_LOSS_MODE and not set(reasons) & set(FALLBACK_STATISTICS)


def retestable(reasons: list[str], seed_count: int | None) -> bool:
    """May a cleared candidate get later passes? Only when its seeds are samples whose content
    disagrees with the label (label_seeds). The later passes' null needs seeds unlike the label's
    bulk; seeds taken from the label's low-loss mode are, on a clean label, its typical samples,
    and leaving out the trained samples that resemble them strips the label of its own content
    (clean MNIST 4k: label 6, flagged by log_spectral_ratio only, went from 12/32 vs 5/55 to
    29/32 vs 16/55 after 162 of its samples were left out, and was confirmed)."""
    return seeding_kind(reasons, seed_count) == CONTENT


def candidate_controls(content: torch.Tensor | None, labels: torch.Tensor, label: int, reasons: list[str],
                       seed_count: int | None, seeds: torch.Tensor, anchors: torch.Tensor, half_b: torch.Tensor,
                       seed: int) -> torch.Tensor:
    """The held-out test's controls for a candidate: matched in content for seeds from the low-loss
    mode, else a random share of the label. Not for fixed-count seeds: they stop at a count, not at
    a mode, and a dirty-label target's poison beyond them would be its seeds' nearest neighbours,
    i.e. their controls."""
    if content is not None and seeding_kind(reasons, seed_count) == LOW_LOSS_MODE:
        return content_matched_controls(content, labels, label, seeds, anchors, half_b)
    return control_sample(labels, label, seeds, anchors, seed + label)
