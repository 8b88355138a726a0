"""The pooled test: poison spread over every label (all-to-all), which no single label shows.

All-to-all poison relabels each class's triggered samples to another class, so every label holds
about the same share of it. The labels stay exchangeable, and the per-label statistics
(defenses/signs.py) see nothing to single out. What the poison still shows is a disagreement: its
content (the frozen prefix's nearest neighbours, defenses/content.py) points to another label. A
clean set has such samples too (natural ambiguities), so disagreement alone proves nothing. The
trigger is what only the poison shares, and the test asks whether the disagreeing samples share
something that content does not explain.

1. The pool: every sample not yet isolated whose neighbours' majority is another label (the
   caller's `disagrees`: defenses/isolation.py pools the content view's disagreement and the raw
   images'), split into halves A and B.
2. Controls matched on content: for each sample of B, its nearest sample (frozen features) that
   agrees with its label and is in neither half. Both B and the controls are held out.
3. A quarantine model (defenses/quarantine.py) learns half A as its extra class and every other
   training sample under its own label.
4. Null model: a held-out pooled sample is *confidently* quarantined (probability above
   `CONFIDENT`) no more often than its content-matched control. One-sided Fisher exact test at
   `alpha`, and an excess of at least `MIN_EXCESS` samples. The matching is imperfect: clean
   held-out pooled samples pass a probability of 0.1 far more often than their controls (62–88%
   against 18–57%), because they share their *ambiguity* with half A. But a shared trigger makes
   the model sure, and shared ambiguity does not. Measured (resnet_small, `freeze_layers` 3):

   | set | held out | above 0.9: pooled / controls | above 0.99 |
   |---|---|---|---|
   | Fashion-MNIST 20k, clean | 1,774 | 2 / 0 | 0 / 0 |
   | MNIST 20k, clean | 686 | 1 / 0 | 0 / 0 |
   | MNIST 5k, clean | 236 | 7 / 1 | 0 / 0 |
   | Fashion-MNIST 20k, all-to-all 10% | 2,575 | 731 / 0 | 245 / 0 |
   | MNIST 5k, all-to-all 10% | 450 | 158 / 20 | 63 / 5 |

   (23 of the MNIST all-to-all controls were themselves poisoned: triggered samples whose content
   agrees with their new label.) Measured again with the pool of defenses/isolation.py (the content
   view's disagreement or the raw images'), partial models of the robustness cells, held out:

   | set | held out | above 0.9: pooled / controls | above 0.99 |
   |---|---|---|---|
   | Fashion-MNIST 5k, BadNets 10%, label 0's poison removed | 581 | 73 / 18 | 0 / 0 |
   | MNIST 5k, clean | 293 | 21 / 4 | 0 / 0 |
   | MNIST 4k, BadNets 10%, label 0's poison removed | 236 | 23 / 2 | 1 / 0 |
   | Fashion-MNIST 60k, all-to-all 10%, label 6's poison removed | 7,753 | 2,566 / 275 | 1,709 / 100 |

   Above 0.9 small clean pools share enough ambiguity to reject (a cut of 0.9 isolated 27% of a
   clean-labelled Fashion-MNIST 5k set); above 0.99 only poison landed (all 1,709 and all 100 of
   the controls' were poisoned).
5. If the test rejects, the held-out pooled samples above `SEED_PROBABILITY` seed `rounds`
   rounds of two cross-fitted quarantine models. Each model trains on one random half of the data
   (its seeds relabelled to the quarantine class, its samples outside the pool under their labels;
   the pool's other samples are left out, since most poison is there and would teach the trigger
   its poisoned labels) and scores the other half, so that no sample is scored by a model that
   learnt it. The pool's samples above `threshold`, whatever their label, seed the next round;
   after the last, their labels are flagged, and each gives up the upper mode of its scores
   (defenses/modes.py; every sample is scored, each by the fold model that did not train on it).
6. A label the per-label test confirmed (defenses/quarantine.py) before the pooled test ran may be
   its largest receiver of spread poison (all-to-all): its quarantine class learnt the trigger and
   the label's natural ambiguities together, since both disagree with its content. When the pooled
   model quarantines that label's isolated samples more often than its other samples (Fisher, one
   sided), the trigger the pooled test found is taken to be in them, and the pooled model judges
   the label: only its samples above `threshold` there stay isolated (`rejudge_explained_labels`).
   Each sample is scored by the fold model that did not train on it, but a later round may seed
   on the label's isolated samples of the other fold; and a hit is counted at `threshold` (0.1),
   where shared ambiguity also passes. So the null is approximate: it could take ambiguity for
   the trigger when a label's isolation is real poison of another trigger (not measured; counting
   hits at CONFIDENT would be stricter). Measured on Fashion-MNIST
   60k, all-to-all BadNets 10%: label 6 (shirts) isolated 1,416, about 800 of them clean shirts
   that look like coats and T-shirts; the final model, trained without them, classified 32% of the
   test shirts correctly against the clean reference's 71%, and clean accuracy was 86.48% against 90.53%.
"""

from __future__ import annotations

import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.content import matched_controls
from ptdefense.defenses.held_out import more_often_p_value
from ptdefense.defenses.quarantine import cross_fitted_probability, quarantine_probability, train_quarantine
from ptdefense.defenses.seeding import split_halves
from ptdefense.training import FitConfig

CONFIDENT = 0.99  # a quarantine probability above this is "confidently quarantined" (the test; see step 4)
SEED_PROBABILITY = 0.9  # held-out pooled samples above this seed the isolation (729 of 731 poison, measured)
MIN_EXCESS = 5  # held-out pooled samples confidently quarantined beyond their controls, at the least


def excess_test(seed_hits: int, seed_count: int, control_hits: int, control_count: int, alpha: float) -> dict:
    """Fisher's exact test (one-sided) that held-out pooled samples are confidently quarantined more
    often than their controls, with the least excess a trigger shows."""
    result = {"held_out_pooled": seed_count, "held_out_pooled_confident": seed_hits,
              "controls": control_count, "controls_confident": control_hits}
    if seed_count == 0 or control_count == 0:
        return {**result, "p_value": 1.0, "confirmed": False, "reason": "too few disagreeing samples to test"}
    p_value = more_often_p_value(seed_hits, seed_count, control_hits, control_count)
    confirmed = p_value <= alpha and seed_hits - control_hits >= MIN_EXCESS
    reason = (f"held-out disagreeing samples confidently quarantined {seed_hits}/{seed_count}, content-matched "
              f"controls {control_hits}/{control_count}, p={p_value:.2g}"
              + ("" if confirmed else f" (needs p ≤ {alpha:.2g} and an excess of {MIN_EXCESS})"))
    return {**result, "p_value": p_value, "confirmed": confirmed, "reason": reason}


def pooled_test(train: ImageSet, features: torch.Tensor, disagrees: torch.Tensor, num_classes: int, architecture: str,
                width: int | None, config: FitConfig, device: torch.device, seed: int, alpha: float,
                threshold: float, rounds: int = 2, share: float = 0.0,
                removed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Steps 1 to 5 of the module's story: (isolated indices, quarantine probability, details).

    `disagrees` (a mask) marks the samples whose content disagrees with their label (step 1), and
    `features` are what controls are matched on. `removed` (a mask) holds samples already isolated
    by the per-label test: they are neither pooled, nor controls, nor trained on, so the test asks
    whether poison is left in the rest."""
    labels = train.labels
    removed = torch.zeros(labels.numel(), dtype=torch.bool) if removed is None else removed
    disagrees = disagrees & ~removed
    pool = torch.nonzero(disagrees).flatten()
    half_a, half_b = split_halves(pool, seed)
    controls = matched_controls(features, half_b, ~disagrees & ~removed)
    half_b = half_b[:controls.numel()]
    details: dict = {"pool": int(pool.numel()), "quarantine_sample_epochs": 0}
    probability = torch.zeros(labels.numel(), dtype=torch.float64)
    if half_a.numel() < MIN_EXCESS or half_b.numel() < MIN_EXCESS:
        return labels[:0], probability, {**details, "confirmed": False,
                                         "reason": f"too few disagreeing samples to test ({pool.numel()})"}
    held_out = removed.clone()
    held_out[half_b] = True
    held_out[controls] = True
    model, sample_epochs, copies = train_quarantine(train, half_a, half_a[:0], held_out, num_classes,
                                                       architecture, width, config, device, seed, share)
    details["quarantine_sample_epochs"] += sample_epochs
    tested = torch.cat([half_b, controls])
    probability[tested] = quarantine_probability(model, train.images[tested], num_classes, device, copies)
    confident = probability > CONFIDENT
    details.update(excess_test(int(confident[half_b].sum()), half_b.numel(), int(confident[controls].sum()),
                               controls.numel(), alpha))
    if not details["confirmed"]:
        return labels[:0], probability, details
    seeds = half_b[probability[half_b] > SEED_PROBABILITY]
    details["seed_count"] = []
    for round_index in range(max(1, rounds)):
        details["seed_count"].append(int(seeds.numel()))
        probability, sample_epochs, _ = cross_fitted_probability(train, seeds, disagrees | removed, num_classes,
                                                                 architecture, width, config, device,
                                                                 seed + 2 * round_index + 1, share)
        details["quarantine_sample_epochs"] += sample_epochs
        seeds = torch.nonzero(probability > threshold).flatten()
    return seeds, probability, details


def rejudge_explained_labels(labels: torch.Tensor, isolated: torch.Tensor, probability: torch.Tensor,
                             pooled_probability: torch.Tensor, confirmed: list[int], threshold: float,
                             alpha: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Step 6: the per-label isolation (`isolated`, `probability`) with each confirmed label that the
    pooled model explains judged by the pooled model instead; and, per label, the test's figures.

    Null model: the pooled model quarantines a confirmed label's isolated samples no more often than
    the label's other samples, i.e. the trigger it learnt is not what that label's isolation found.
    Rejected (one-sided Fisher at `alpha` / the confirmed labels, and an excess of MIN_EXCESS): the
    label's isolation is replaced by its samples above `threshold` under the pooled model."""
    mask = torch.zeros(labels.numel(), dtype=torch.bool)
    mask[isolated] = True
    pooled_hit = pooled_probability > threshold
    kept, tests = mask.clone(), {}
    for label in confirmed:
        members = labels == label
        inside, outside = members & mask, members & ~mask
        hits, others = int(pooled_hit[inside].sum()), int(pooled_hit[outside].sum())
        count, other_count = int(inside.sum()), int(outside.sum())
        p_value = more_often_p_value(hits, count, others, other_count) if count and other_count else 1.0
        excess = hits - others * count / max(1, other_count)
        explained = p_value <= alpha / max(1, len(confirmed)) and excess >= MIN_EXCESS
        tests[str(label)] = {"isolated": count, "isolated_pooled_quarantined": hits, "others": other_count,
                             "others_pooled_quarantined": others, "p_value": p_value, "explained": explained}
        if explained:
            kept[inside & ~pooled_hit] = False
            probability = torch.where(members, pooled_probability, probability)
            tests[str(label)]["kept"] = int((kept & members).sum())
    return torch.nonzero(kept).flatten(), probability, tests
