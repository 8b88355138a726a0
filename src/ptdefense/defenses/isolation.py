"""PT's isolation step: rank training samples under the partial model and pick the suspects.

Three rules (isolation.method):
- ratio: the lowest-loss `ratio` share, globally (naive PT);
- auto (default): labels whose signs of poison stand out (defenses/signs.py) are candidates; each
  is tested with a quarantine class trained on half its seeds, and only the labels that pass are
  isolated from (defenses/quarantine.py). Seeds come from the frozen prefix's view of content
  (defenses/content.py) or from the label's low-loss mode, so no poison rate is assumed. Labels
  seeded from their low-loss mode are tested only when no label seeded by content is confirmed, and,
  unless `easy_tail` nominated them, against the labels no statistic nominated (confirm_in_turn,
  defenses/held_out.py); a candidate
  with too few seeds to hold out is cleared untested;
- quarantine: the same, with `seed_ratio` × N lowest-loss seeds shared among the candidates.

With auto and quarantine, the pooled test (defenses/pooled.py) then asks whether the samples
left whose content disagrees with their label, across every label, share a trigger: poison
spread over all labels (all-to-all) leaves no single label to flag, or only its largest receiver.
Last, each flagged label gives up the upper mode of its quarantine scores, or nothing when it has
no separate mode (defenses/modes.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.content import content_features, easy_disagreement, neighbour_votes
from ptdefense.defenses.lowest_loss import Isolation, isolate_lowest_loss  # noqa: F401 (re-exported)
from ptdefense.defenses.modes import isolate_upper_modes
from ptdefense.defenses.pooled import pooled_test, rejudge_explained_labels
from ptdefense.defenses.quarantine import confirm_and_isolate
from ptdefense.defenses.seeding import FIXED_COUNT, LOW_LOSS_MODE, seeding_kind
from ptdefense.defenses.signs import FALLBACK_STATISTICS, candidate_labels, label_statistics
from ptdefense.models.blocknet import BlockNet
from ptdefense.training import INFERENCE_BATCH_SIZE, FitConfig, predict_logits, to_input


def logits_and_features(model: BlockNet, images: torch.Tensor, device: torch.device,
                        batch_size: int = INFERENCE_BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and penultimate features (the output of every block but the head, average-pooled),
    in one pass (fp32, on CPU): the same logits as `predict_logits`, at the cost of one pass, not two."""
    model.to(device=device, memory_format=torch.channels_last).eval()  # outside inference_mode, see predict_logits
    *body, head = model.blocks.values()
    logits, pooled = [], []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            features = to_input(images[start:start + batch_size], device)
            for block in body:
                features = block(features)
            logits.append(head(features).float().cpu())
            pooled.append(features.float().mean((2, 3)).cpu())
    if not logits:
        return torch.empty(0), torch.empty(0)
    return torch.cat(logits), torch.cat(pooled)


def signs_and_candidates(train: ImageSet, logits: torch.Tensor, features: torch.Tensor, votes: torch.Tensor,
                         num_classes: int, flag_z: float) -> tuple[dict[int, list[str]], torch.Tensor, dict]:
    """The candidates, the easily fitted content-disagreeing samples (seeds), and every statistic and z-score."""
    losses = F.cross_entropy(logits, train.labels, reduction="none")
    easy, shares = easy_disagreement(votes, losses, train.labels, num_classes)
    statistics = label_statistics(logits, features, train.labels, num_classes, shares)
    candidates, scores = candidate_labels(statistics, flag_z)
    return candidates, easy, {**statistics, "z": scores, "flag_z": flag_z}


def pooled_disagreement(model: BlockNet, train: ImageSet, votes: torch.Tensor, num_classes: int,
                        freeze_layers: int, device: torch.device) -> torch.Tensor:
    """The pooled test's pool: samples whose content disagrees with their label in the content view
    or in the raw images. Each view misses poison the other finds, where poisoned samples of one
    source class share a trigger and label and so are each other's neighbours: on Fashion-MNIST 60k,
    all-to-all BadNets 10%, the view's pool held 2,960 of the 6,000 poisoned (in 10,943), the raw
    images' 5,676 (in 13,470), both 5,729 (in 16,080); Blend is the reverse (defenses/content.py).
    Poison missing from the pool is trained under its label and teaches the trigger that label."""
    raw = content_features(model, train.images, freeze_layers, device, view=False)
    raw_votes = neighbour_votes(raw, train.labels, num_classes)
    return (votes.argmax(1) != train.labels) | (raw_votes.argmax(1) != train.labels)


def confirm_in_turn(train: ImageSet, candidates: dict[int, list[str]], losses: torch.Tensor, easy: torch.Tensor,
                    num_classes: int, architecture: str, width: int | None, config: FitConfig, device: torch.device,
                    seed: int, settings, seed_count: int | None,
                    content: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The quarantine test (confirm_and_isolate) on the candidates seeded by content; then, only if
    none of them is confirmed, on those seeded from their low-loss mode (nominated by the loss
    statistics alone), each judged against the labels no statistic nominated (held_out.against_null)
    unless `easy_tail` nominated it (seeding.judged_against_null).
    With fixed-count seeds (method quarantine) the second group is those nominated by `easy_tail` alone.

    Why in turn: a label's easiest samples may be a natural easy sub-population, and seeds drawn from
    its low-loss mode teach the quarantine class that sub-population along with any trigger.
    Measured on Fashion-MNIST 60k: in all-to-all BadNets 10%, sneakers (label 7, which all-to-all
    poisons too) were nominated by `easy_tail` alone and confirmed, and isolation took 11,532 samples
    at 52% precision (FPR 10.2%, against 2.26% without it); in Blend 1% (`d3426ca`), sandals (no
    poison), nominated by `diversity_gap` alone, were confirmed beside the target, and 4,045 clean
    sandals were isolated. Dirty-label poison shows in content; a loss-only candidate beside it would
    be a second, clean-label attack, and is left untested (named in the verdict). The second group
    trains its own model, with the null labels' seeds, so that it does not dilute the repeats that
    thin content-seeded poison needs (quarantine.repeat_count), and the null labels' seeds make its
    own repeats few (2 in the label-consistent and clean Fashion-MNIST 60k cells, against 5).
    Each group is tested at its Bonferroni share of `confirm_alpha` (its candidates out of all)."""
    primary = {label: reasons for label, reasons in candidates.items() if not waits_for_others(reasons, seed_count)}
    fallback = {label: reasons for label, reasons in candidates.items() if label not in primary}
    null_labels = [label for label in range(num_classes) if label not in candidates]
    merged: dict = {"candidates": {str(label): reasons for label, reasons in candidates.items()}, "seed_count": [],
                    "quarantine_sample_epochs": 0, "confirmation": {}, "confirmed_classes": []}
    isolated, probability = torch.empty(0, dtype=torch.int64), -losses
    for group in (primary, fallback):
        if not group:
            continue
        if merged["confirmed_classes"]:
            reason = (("not tested: seeded from its low-loss mode (the loss statistics alone nominated it)"
                       if seed_count is None else f"not tested: {'/'.join(FALLBACK_STATISTICS)} alone nominated it")
                      + ", and another label was confirmed (defenses/isolation.py, confirm_in_turn)")
            for label in group:
                merged["confirmation"][str(label)] = {"confirmed": False, "reason": reason}
            continue
        group_isolated, group_probability, found = confirm_and_isolate(
            train, group, losses, easy, num_classes, architecture, width, config, device, seed,
            settings.seed_confidence, settings.quarantine_threshold, settings.quarantine_rounds,
            settings.confirm_alpha * len(group) / len(candidates), seed_count, settings.quarantine_share,
            settings.confirm_passes, content, null_labels, settings.flag_z)
        if found["seed_count"]:  # a model was trained: its scores rank the samples (a group too thin to test has none)
            isolated, probability = group_isolated, group_probability
        merged["confirmation"].update(found["confirmation"])
        merged["seed_count"] += found["seed_count"]
        merged["quarantine_sample_epochs"] += found["quarantine_sample_epochs"]
        if found.get("seed_copies"):
            merged["seed_copies"] = merged.get("seed_copies", []) + found["seed_copies"]
        merged["confirmed_classes"] = found.get("confirmed_classes", [])
        if found.get("null_labels"):
            merged["null_labels"] = found["null_labels"]
    return isolated, probability, merged


def waits_for_others(reasons: list[str], seed_count: int | None) -> bool:
    """Is the candidate tested only when no other is confirmed (confirm_in_turn)? With method auto, when
    its seeds are its low-loss mode; with fixed-count seeds, when `easy_tail` alone nominated it."""
    kind = seeding_kind(reasons, seed_count)
    return kind == LOW_LOSS_MODE or (kind == FIXED_COUNT and not set(reasons) - set(FALLBACK_STATISTICS))


def cleared_and_untested(quarantine: dict) -> tuple[list[int], list[int]]:
    """The candidates that were tested and not confirmed, and those never tested (too few seeds to
    hold out, or waiting, seeded from its low-loss mode, while another label was confirmed)."""
    # A tested candidate has the held-out test's figures (quarantine.held_out_test always records controls).
    untested = sorted(int(label) for label, test in quarantine["confirmation"].items() if "controls" not in test)
    confirmed = set(quarantine.get("confirmed_classes", []))
    cleared = [int(label) for label in quarantine["candidates"] if int(label) not in confirmed | set(untested)]
    return cleared, untested


def isolate_samples(model: BlockNet, train: ImageSet, settings, num_classes: int, architecture: str,
                    width: int | None, freeze_layers: int, device: torch.device,
                    seed: int) -> tuple[Isolation, torch.Tensor]:
    """Per-sample loss under the partial model, then the isolation rule chosen in params."""
    if settings.method == "ratio":
        logits = predict_logits(model, train.images, device, settings.batch_size, description="partial-model logits")
        losses = F.cross_entropy(logits, train.labels, reduction="none")
        return isolate_lowest_loss(losses, settings.ratio), losses
    logits, features = logits_and_features(model, train.images, device, settings.batch_size)
    losses = F.cross_entropy(logits, train.labels, reduction="none")
    content = content_features(model, train.images, freeze_layers, device)
    votes = neighbour_votes(content, train.labels, num_classes)
    candidates, easy, details = signs_and_candidates(train, logits, features, votes, num_classes, settings.flag_z)
    config = FitConfig(epochs=settings.quarantine_epochs, batch_size=settings.train_batch_size,
                       lr=settings.lr, precision=settings.precision, min_steps=settings.min_steps)
    isolated, probability = torch.empty(0, dtype=torch.int64), -losses
    details["suspicious_classes"] = []
    if candidates:
        seed_count = (max(1, round(settings.seed_ratio * len(train) / len(candidates)))
                      if settings.method == "quarantine" else None)
        isolated, probability, quarantine = confirm_in_turn(
            train, candidates, losses, easy, num_classes, architecture, width, config, device, seed, settings,
            seed_count, content)
        details.update(quarantine)
        confirmed = quarantine.get("confirmed_classes", [])
        details["suspicious_classes"] = confirmed
        details["cleared_classes"], details["untested_classes"] = cleared_and_untested(quarantine)
    # Is poison left outside the confirmed labels, spread over many (all-to-all)? Always asked: all-to-all
    # poison can make one receiving label stand out, and that label's isolation leaves the rest behind.
    removed = torch.zeros(len(train), dtype=torch.bool)
    removed[isolated] = True
    disagrees = pooled_disagreement(model, train, votes, num_classes, freeze_layers, device)
    pooled_isolated, pooled_probability, pooled = pooled_test(
        train, content, disagrees, num_classes, architecture, width, config, device, seed + 101,
        settings.confirm_alpha / (len(candidates) + 1), settings.quarantine_threshold, settings.quarantine_rounds,
        settings.quarantine_share, removed)
    details["quarantine_sample_epochs"] = (details.get("quarantine_sample_epochs", 0)
                                           + pooled.pop("quarantine_sample_epochs"))
    details["pooled_test"] = pooled
    if pooled["confirmed"]:
        if details["suspicious_classes"]:  # a confirmed label may be spread poison's largest receiver
            isolated, probability, pooled["rejudged"] = rejudge_explained_labels(
                train.labels, isolated, probability, pooled_probability, details["suspicious_classes"],
                settings.quarantine_threshold, settings.confirm_alpha)
        isolated = torch.unique(torch.cat([isolated, pooled_isolated]))
        probability = torch.maximum(probability, pooled_probability) if details["suspicious_classes"] \
            else pooled_probability
        details["suspicious_classes"] = sorted(set(details["suspicious_classes"])
                                               | set(train.labels[pooled_isolated].tolist()))
    elif not details["suspicious_classes"]:
        details["note"] = ("no label's statistics stand out, and " if not candidates else
                           "no candidate label passed the held-out quarantine test, and ") + \
            "the disagreeing samples pooled over all labels share no trigger: nothing isolated"
    confident = isolated
    if isolated.numel() or details["suspicious_classes"]:
        isolated, confident = isolate_by_modes(train.labels, isolated, probability, settings.mode_posterior, seed,
                                               details)
    return Isolation(isolated, probability, details, confident), losses


def isolate_by_modes(labels: torch.Tensor, isolated: torch.Tensor, probability: torch.Tensor, posterior: float,
                     seed: int, details: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The final cut (defenses/modes.py): from each label the tests flagged (`suspicious_classes`,
    and the labels of the samples above their threshold), the upper mode of its quarantine scores; a
    flagged label without two separate modes isolates nothing and is named in
    `details["unseparated_classes"]`. Returns (the isolated indices, the confident ones among them)."""
    flagged = sorted(set(labels[isolated].tolist()) | set(details["suspicious_classes"]))
    isolated, confident, details["modes"] = isolate_upper_modes(labels, probability, flagged, posterior, seed)
    unseparated = [label for label in flagged if not details["modes"][str(label)]["separated"]]
    details["unseparated_classes"] = unseparated
    details["suspicious_classes"] = [label for label in details["suspicious_classes"] if label not in unseparated]
    return isolated, confident


def write_isolation(csv_path, indices_path, labels: torch.Tensor, losses: torch.Tensor, result: Isolation) -> None:
    """losses.csv (one row per sample, most suspicious first) and isolated.npz (the indices, and the
    confident ones that the finetune unlearns)."""
    import numpy as np

    from ptdefense.artifacts import write_csv, write_npz

    isolated_mask = torch.zeros(labels.numel(), dtype=torch.bool)
    isolated_mask[result.isolated] = True
    order = torch.sort(-result.scores, stable=True).indices
    write_csv(csv_path, [{"rank": rank, "index": index, "label": int(labels[index]),
                          "partial_loss": f"{float(losses[index]):.6g}",
                          "suspicion_score": f"{float(result.scores[index]):.6g}",
                          "isolated": int(isolated_mask[index])}
                         for rank, index in enumerate(order.tolist(), start=1)])
    confident = result.isolated if result.confident is None else result.confident
    write_npz(indices_path, isolated_indices=result.isolated.numpy().astype(np.int64),
              confident_indices=confident.numpy().astype(np.int64),
              partial_losses=losses.numpy().astype(np.float32), suspicion_scores=result.scores.numpy().astype(np.float64))
