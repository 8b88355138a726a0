"""ABL, Anti-Backdoor Learning (Li et al., NeurIPS 2021): the baseline PT is compared with.

The four steps of its paper, on the same poisoned data, model and optimiser as PT:
1. isolation: train with a loss held at γ, the LGA loss sign(CE − γ)·CE or the flooding loss
   |CE − γ| + γ, both on the batch mean. The model cannot fit clean samples much below γ, while
   backdoor samples, learned much faster, still fall below it;
2. isolate the `isolation_ratio` lowest-loss samples under that model, globally;
3. retrain: continue training the isolation model on the rest, with plain cross-entropy;
4. unlearn: gradient ascent on the cross-entropy of the isolated samples, at a small learning rate.
The official code trains for more epochs (isolation 20, unlearning 5) with a step schedule; here
every phase uses this project's one-cycle SGD and its epochs are params (`abl` in params.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.lowest_loss import isolate_lowest_loss
from ptdefense.models.blocknet import BlockNet
from ptdefense.training import EpochCallback, FitConfig, fit, per_sample_loss


def held_loss(kind: str, gamma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """ABL's isolation loss on the batch mean cross-entropy: ascent below γ, descent above it."""
    if kind == "lga":
        return lambda loss: torch.sign(loss.detach() - gamma) * loss
    if kind == "flooding":
        return lambda loss: (loss - gamma).abs() + gamma
    raise ValueError(f"unknown ABL loss {kind!r}; valid choices: lga, flooding")


def gradient_ascent(loss: torch.Tensor) -> torch.Tensor:
    return -loss


@dataclass
class ABLResult:
    isolated: torch.Tensor  # sorted int64 indices
    isolation_losses: torch.Tensor  # per-sample loss under the isolation model (before retraining)
    history: dict[str, list[dict[str, float]]]
    sample_epochs: int


def run_abl(model: BlockNet, train: ImageSet, settings, device: torch.device, seed: int,
            on_epoch_end: Callable[[str], EpochCallback | None] = lambda phase: None) -> ABLResult:
    """Train `model` (fresh) with ABL on `train`; `settings` is params.abl."""
    optimiser = dict(batch_size=settings.batch_size, momentum=settings.momentum, weight_decay=settings.weight_decay,
                     precision=settings.precision, schedule=settings.schedule, augment=settings.augment)
    floor = dict(min_steps=settings.min_steps)  # isolation and retraining; unlearning keeps ABL's 5 short epochs
    history = {}
    history["isolation"] = fit(model, train, FitConfig(epochs=settings.isolation_epochs, lr=settings.lr, **optimiser, **floor),
                               device, seed, objective=held_loss(settings.loss, settings.gamma),
                               on_epoch_end=on_epoch_end("isolation"), description="abl isolation")
    losses = per_sample_loss(model, train, device)
    isolated = isolate_lowest_loss(losses, settings.isolation_ratio).isolated
    retained, suspects = train.split(isolated)
    history["retrain"] = fit(model, retained, FitConfig(epochs=settings.retrain_epochs, lr=settings.lr, **optimiser, **floor),
                             device, seed + 1, on_epoch_end=on_epoch_end("retrain"), description="abl retrain")
    history["unlearn"] = []
    if settings.unlearn_epochs and len(suspects):
        history["unlearn"] = fit(model, suspects,
                                 FitConfig(epochs=settings.unlearn_epochs, lr=settings.unlearn_lr, **optimiser),
                                 device, seed + 2, objective=gradient_ascent, on_epoch_end=on_epoch_end("unlearn"),
                                 description="abl unlearn")
    sample_epochs = (len(history["isolation"]) * len(train) + len(history["retrain"]) * len(retained)
                     + len(history["unlearn"]) * len(suspects))
    return ABLResult(isolated, losses, history, sample_epochs)
