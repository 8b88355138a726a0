"""PT's isolation step: rank training samples under the partial model and pick the suspects.

Three rules (isolation.method):
- ratio: the lowest-loss `ratio` share, globally (naive PT);
- auto (default): labels whose signs of poison stand out (defenses/signs.py) are candidates; each
  is tested with a quarantine class trained on half its seeds, and only the labels that pass are
  isolated from (defenses/quarantine.py). Seeds come from the frozen prefix's view of content
  (defenses/content.py) or from the label's low-loss mode, so no poison rate is assumed;
- quarantine: the same, with `seed_ratio` × N lowest-loss seeds shared among the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.content import content_features, easy_disagreement, neighbour_votes
from ptdefense.defenses.quarantine import confirm_and_isolate
from ptdefense.defenses.signs import candidate_labels, label_statistics
from ptdefense.models.blocknet import BlockNet
from ptdefense.training import INFERENCE_BATCH_SIZE, FitConfig, predict_logits, to_input


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


def signs_and_candidates(model: BlockNet, train: ImageSet, logits: torch.Tensor, features: torch.Tensor,
                         freeze_layers: int, num_classes: int, flag_z: float,
                         device: torch.device) -> tuple[dict[int, list[str]], torch.Tensor, dict]:
    """The candidates, the easily fitted content-disagreeing samples (seeds), and every statistic and z-score."""
    losses = F.cross_entropy(logits, train.labels, reduction="none")
    votes = neighbour_votes(content_features(model, train.images, freeze_layers, device), train.labels, num_classes)
    easy, shares = easy_disagreement(votes, losses, train.labels, num_classes)
    statistics = label_statistics(logits, features, train.labels, num_classes, shares)
    candidates, scores = candidate_labels(statistics, flag_z)
    return candidates, easy, {**statistics, "z": scores, "flag_z": flag_z}


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
    candidates, easy, details = signs_and_candidates(model, train, logits, features, freeze_layers, num_classes,
                                                     settings.flag_z, device)
    if not candidates:
        details.update(suspicious_classes=[], note="no label's statistics stand out: nothing isolated")
        return Isolation(torch.empty(0, dtype=torch.int64), -losses, details), losses
    config = FitConfig(epochs=settings.quarantine_epochs, batch_size=settings.train_batch_size,
                       lr=settings.lr, precision=settings.precision, min_steps=settings.min_steps)
    seed_count = (max(1, round(settings.seed_ratio * len(train) / len(candidates)))
                  if settings.method == "quarantine" else None)
    isolated, probability, quarantine = confirm_and_isolate(
        train, candidates, losses, easy, num_classes, architecture, width, config, device, seed,
        settings.seed_confidence, settings.quarantine_threshold, settings.quarantine_rounds, settings.confirm_alpha,
        seed_count)
    details.update(quarantine)
    confirmed = quarantine.get("confirmed_classes", [])
    details["suspicious_classes"] = confirmed
    details["cleared_classes"] = [int(label) for label in quarantine["candidates"] if int(label) not in confirmed]
    if not confirmed:
        details["note"] = "no candidate label passed the held-out quarantine test: nothing isolated"
    return Isolation(isolated, probability, details), losses


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
