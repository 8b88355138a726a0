"""Isolation's result, and the naive rule that both PT (isolation.method: ratio) and ABL use:
isolate the samples a model fits most easily. Kept apart so that ABL does not depend on PT's
isolation machinery (a change there must not re-run ABL's DVC stage)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Isolation:
    isolated: torch.Tensor  # sorted int64 indices of the suspects
    scores: torch.Tensor  # per-sample suspicion score used for the ranking (higher = more suspicious)
    details: dict = field(default_factory=dict)
    # the suspects the finetune unlearns with `finetune.unlearn: confident` (None: all of them)
    confident: torch.Tensor | None = None


def isolate_lowest_loss(losses: torch.Tensor, ratio: float) -> Isolation:
    """The naive rule: the `ratio` share of samples with the lowest loss, globally."""
    count = round(ratio * losses.numel())
    # Stable sort: ties (e.g. losses of exactly 0) are broken by index, so the result is reproducible.
    order = torch.sort(losses, stable=True).indices
    isolated = torch.sort(order[:count]).values
    threshold = float(losses[order[count - 1]]) if count else float("-inf")
    return Isolation(isolated, -losses, {"loss_threshold": threshold})
