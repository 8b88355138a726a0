"""PT's isolation step: rank training samples under the partial model and pick the suspects.

Three rules (isolation.method):
- ratio: the lowest-loss `ratio` share, globally (naive PT);
- quarantine: suspicious classes, then `seed_ratio` × N seeds and a quarantine class (see below);
- auto (default): the same, but the seeds' count comes from each suspicious class's own loss
  distribution (the low-loss mode of a two-component mixture), so no poison rate is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ptdefense.data.dataset import ImageSet
from ptdefense.models.blocknet import BlockNet
from ptdefense.models.registry import build_model
from ptdefense.training import INFERENCE_BATCH_SIZE, FitConfig, fit, predict_logits, to_input


@dataclass
class Isolation:
    isolated: torch.Tensor  # sorted int64 indices of the suspects
    scores: torch.Tensor  # per-sample suspicion score used for the ranking (higher = more suspicious)
    details: dict = field(default_factory=dict)


def isolate_lowest_loss(losses: torch.Tensor, ratio: float) -> Isolation:
    """The naive rule: the `ratio` share of samples with the lowest loss, globally."""
    count = round(ratio * losses.numel())
    # Stable sort: ties (e.g. losses of exactly 0) are broken by index, so the result is reproducible.
    order = torch.sort(losses, stable=True).indices
    isolated = torch.sort(order[:count]).values
    threshold = float(losses[order[count - 1]]) if count else float("-inf")
    return Isolation(isolated, -losses, {"loss_threshold": threshold})


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
    positive gap. Comparing a label with itself cancels what is natural to a class (bags look like
    nothing else, so their runner-ups are diverse whether easy or hard).
    """
    members = torch.nonzero(labels == label).flatten()
    ordered = members[torch.sort(losses[members], stable=True).indices]
    easiest, hardest = ordered[: max(1, ordered.numel() // 10)], ordered[ordered.numel() // 2:]
    return (runner_up_diversity(logits[easiest], labels[easiest], num_classes)
            - runner_up_diversity(logits[hardest], labels[hardest], num_classes))


def suspicious_classes(logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       diversity_margin: float, spectral_margin: float,
                       diversity_relative_margin: float | None = None) -> tuple[list[int], dict]:
    """Labels that hold poison, by either of two signs the partial model shows:

    - dirty-label poison: the label's easiest samples have far more diverse content than its
      hardest ones (`diversity_gap` ≥ `diversity_margin`), or than the other labels' gaps
      (`diversity_gap` ≥ their median + `diversity_relative_margin`). The second form adapts to
      the dataset: on CIFAR-10 every clean label's gap is strongly negative (−0.26 to −0.70) and
      BadNets' target sits at −0.02, far above them but below the absolute margin;
    - clean-label poison: the partial model learns the trigger first, so the label's features
      spread along one direction (trigger present or not) far more than other labels' do. This is
      the spectral signature of Tran et al. (2018), taken per label: (σ1/σ2)² at least
      `spectral_margin` times the median of the other labels. Being relative, the test adapts to
      the dataset, the model and the length of partial training.
    """
    losses = F.cross_entropy(logits, labels, reduction="none")
    gaps: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for label in range(num_classes):
        members = labels == label
        if int(members.sum()) >= 20:
            gaps[str(label)] = diversity_gap(logits, losses, labels, label, num_classes)
            ratios[str(label)] = spectral_ratio(features[members])
    flagged = []
    for label in gaps:
        others = [value for key, value in ratios.items() if key != label]
        reference = float(torch.tensor(others).median()) if others else ratios[label]
        other_gaps = [value for key, value in gaps.items() if key != label]
        gap_reference = float(torch.tensor(other_gaps).median()) if other_gaps else gaps[label]
        relative = diversity_relative_margin is not None and other_gaps and \
            gaps[label] >= gap_reference + diversity_relative_margin
        if gaps[label] >= diversity_margin or relative or ratios[label] >= spectral_margin * reference:
            flagged.append(int(label))
    return flagged, {"diversity_gap": gaps, "spectral_ratio": ratios}


def low_loss_mode_posterior(losses: torch.Tensor, seed: int) -> torch.Tensor:
    """Each loss's posterior probability of belonging to the low-loss mode of a two-component
    Gaussian mixture on log-loss (scikit-learn's GaussianMixture).

    Poison that the partial model has learned sits orders of magnitude below the clean samples of
    its label, so log-loss is bimodal; the mixture finds the split without knowing the poison rate.
    """
    import numpy as np
    from sklearn.mixture import GaussianMixture

    if losses.numel() < 4:
        return torch.zeros(losses.numel(), dtype=torch.float64)
    values = losses.double().clamp(min=1e-12).log10().numpy().reshape(-1, 1)
    mixture = GaussianMixture(n_components=2, n_init=3, random_state=seed).fit(values)
    low = int(np.argmin(mixture.means_.ravel()))
    return torch.from_numpy(mixture.predict_proba(values)[:, low])


def _lowest_and_highest(members: torch.Tensor, losses: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = members[torch.sort(losses[members], stable=True).indices]
    return order[:count], order[order.numel() - count:] if count else order[:0]


def quarantine_isolation(logits: torch.Tensor, features: torch.Tensor, train: ImageSet, num_classes: int,
                         architecture: str, width: int | None, seed_ratio: float | None, diversity_margin: float,
                         spectral_margin: float, threshold: float, config: FitConfig, device: torch.device,
                         seed: int, seed_confidence: float = 0.99, rounds: int = 1,
                         diversity_relative_margin: float | None = None) -> Isolation:
    """Progressive isolation through a quarantine class.

    1. Suspicious classes (see `suspicious_classes`), then seeds: the lowest-loss samples within
       them, `seed_ratio` × N but at most a quarter of those classes. They are nearly all poison.
       With `seed_ratio=None` (method auto) each suspicious class gives the samples that its
       low-loss mode holds with posterior ≥ `seed_confidence` (`low_loss_mode_posterior`), again
       at most a quarter of the class. A high posterior keeps the seeds pure where the poison's
       and the clean samples' losses overlap (measured: 99% pure at 5% and 10% BadNets, against
       83% for the lower half of the mode at 5%).
    2. A fresh model with one extra output, the quarantine class, is trained on the seeds relabelled
       to it, plus every sample whose label is not suspicious (all clean for an all-to-one attack),
       plus as many "anchors": the highest-loss samples of the suspicious classes, under their label.
       The samples in between, where residual poison hides, are left out.
       The only thing the seeds share across their varied content is the trigger, so the model
       learns "trigger → quarantine", and generalises it to the poison the seeds missed.
    3. Isolated: samples of the suspicious classes whose quarantine probability exceeds `threshold`.
    4. With `rounds` > 1, steps 2 and 3 repeat with the isolated samples as seeds.
    """
    labels = train.labels
    losses = F.cross_entropy(logits, labels, reduction="none")
    classes, statistics = suspicious_classes(logits, features, labels, num_classes, diversity_margin, spectral_margin,
                                             diversity_relative_margin)
    details: dict = {"suspicious_classes": classes, **statistics}
    if not classes:
        details["note"] = "no label shows a sign of poison: nothing isolated"
        return Isolation(torch.empty(0, dtype=torch.int64), -losses, details)
    in_suspicious = torch.isin(labels, torch.tensor(classes))
    # Seeds: the lowest-loss samples within the suspicious classes. Easy clean classes do not compete
    # for them, and more seeds teach the trigger better; the cap of a quarter keeps them nearly pure
    # when the poison is only part of a class (clean-label attacks poison half of the target class).
    # Anchors: as many of the highest-loss samples of the suspicious classes, kept under their label,
    # so that the clean content of those classes has a home other than the quarantine class.
    candidates = torch.nonzero(in_suspicious).flatten()
    if seed_ratio is not None:
        seed_count = min(round(seed_ratio * labels.numel()), candidates.numel() // 4)
        seeds, anchors = _lowest_and_highest(candidates, losses, seed_count)
    else:
        picked = []
        details["low_loss_mode_size"], details["confident_seed_count"] = {}, {}
        for label in classes:
            members = torch.nonzero(labels == label).flatten()
            posterior = low_loss_mode_posterior(losses[members], seed)
            confident = int((posterior >= seed_confidence).sum())
            details["low_loss_mode_size"][str(label)] = int((posterior > 0.5).sum())
            details["confident_seed_count"][str(label)] = confident
            picked.append(_lowest_and_highest(members, losses, min(confident, members.numel() // 4)))
        # A flagged label with no confident low-loss sample shows no learnt poison: it is cleared, so
        # that its samples train the quarantine model under their own label (WaNet, freeze_layers=1:
        # clean trousers were flagged by the spectral test, had no seed, and were isolated anyway).
        cleared = [label for label, (label_seeds, _) in zip(classes, picked) if label_seeds.numel() == 0]
        if cleared:
            details["cleared_classes"] = cleared
            classes = [label for label in classes if label not in cleared]
            in_suspicious = torch.isin(labels, torch.tensor(classes, dtype=torch.int64))
        seeds = torch.cat([pair[0] for pair in picked])
        anchors = torch.cat([pair[1] for pair in picked])
    if seeds.numel() == 0:
        details["note"] = "the suspicious classes have no low-loss mode: nothing isolated"
        return Isolation(torch.empty(0, dtype=torch.int64), -losses, details)
    details["seed_count"], details["quarantine_training_count"], details["quarantine_sample_epochs"] = [], 0, 0
    quarantine_probability = torch.zeros(labels.numel())
    for round_index in range(rounds):
        if round_index:
            # Later rounds: the previous round's isolated samples are the seeds, uncapped. They are
            # far more numerous than the first seeds and as pure (100% precision measured at 5%
            # BadNets), so the quarantine class generalises further.
            seeds = isolated
            if seeds.numel() == 0:
                break
        quarantine_model, sample_epochs = _train_quarantine(train, seeds, anchors, in_suspicious, num_classes, architecture,
                                             width, config, device, seed + round_index)
        # Only the suspicious classes can be isolated, so each round scores only them; the other
        # samples' scores (for the ranking) come from the last round's model, once.
        quarantine_probability[in_suspicious] = _quarantine_probability(
            quarantine_model, train.images[in_suspicious], num_classes, device)
        isolated = torch.nonzero(in_suspicious & (quarantine_probability > threshold)).flatten()
        details["seed_count"].append(int(seeds.numel()))
        details["quarantine_training_count"] += int((~in_suspicious).sum()) + int(seeds.numel()) + int(anchors.numel())
        details["quarantine_sample_epochs"] += sample_epochs
    quarantine_probability[~in_suspicious] = _quarantine_probability(
        quarantine_model, train.images[~in_suspicious], num_classes, device)
    details["anchor_count"] = int(anchors.numel())
    return Isolation(isolated, quarantine_probability, details)


def _train_quarantine(train: ImageSet, seeds: torch.Tensor, anchors: torch.Tensor, in_suspicious: torch.Tensor,
                      num_classes: int, architecture: str, width: int | None, config: FitConfig,
                      device: torch.device, seed: int) -> tuple[BlockNet, int]:
    """Train a model with one extra output (the quarantine class), on the seeds relabelled to it;
    return it and the sample-epochs it trained."""
    quarantine_label = num_classes
    relabelled = train.labels.clone()
    relabelled[seeds] = quarantine_label
    training = ~in_suspicious
    training[seeds] = True
    training[anchors] = True
    chosen = torch.nonzero(training).flatten()
    torch.manual_seed(seed)
    model = build_model(architecture, train.images.shape[1], num_classes + 1, width)
    history = fit(model, ImageSet(train.images[chosen], relabelled[chosen]), config, device, seed,
                  description="quarantine")
    return model, len(history) * chosen.numel()


def _quarantine_probability(model: BlockNet, images: torch.Tensor, num_classes: int,
                            device: torch.device) -> torch.Tensor:
    """The quarantine class's softmax probability for each image."""
    if len(images) == 0:  # every label suspicious, or none: nothing to score on this side
        return torch.empty(0)
    return predict_logits(model, images, device, description="quarantine scores").softmax(1)[:, num_classes]


def isolate_samples(model: BlockNet, train: ImageSet, settings, num_classes: int, architecture: str,
                    width: int | None, device: torch.device, seed: int) -> tuple[Isolation, torch.Tensor]:
    """Per-sample loss under the partial model, then the isolation rule chosen in params."""
    if settings.method == "ratio":
        logits = predict_logits(model, train.images, device, settings.batch_size, description="partial-model logits")
    else:
        logits, features = logits_and_features(model, train.images, device, settings.batch_size)
    losses = F.cross_entropy(logits, train.labels, reduction="none")
    if settings.method == "ratio":
        result = isolate_lowest_loss(losses, settings.ratio)
    elif settings.method in ("quarantine", "auto"):
        config = FitConfig(epochs=settings.quarantine_epochs, batch_size=settings.train_batch_size,
                           lr=settings.lr, precision=settings.precision, min_steps=settings.min_steps)
        seed_ratio = settings.seed_ratio if settings.method == "quarantine" else None
        result = quarantine_isolation(logits, features, train, num_classes, architecture, width, seed_ratio,
                                      settings.diversity_margin, settings.spectral_margin, settings.quarantine_threshold,
                                      config, device, seed, settings.seed_confidence, settings.quarantine_rounds,
                                      settings.diversity_relative_margin)
    else:  # the params schema only admits the methods above
        raise ValueError(f"unknown isolation method {settings.method!r}")
    return result, losses


def write_isolation(csv_path, indices_path, labels: torch.Tensor, losses: torch.Tensor, result: Isolation) -> None:
    """losses.csv (one row per sample, most suspicious first) and isolated.npz (the indices)."""
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
    write_npz(indices_path, isolated_indices=result.isolated.numpy().astype(np.int64),
              partial_losses=losses.numpy().astype(np.float32), suspicion_scores=result.scores.numpy().astype(np.float32))
