"""`freeze_layers: auto`: how many blocks PT keeps frozen, picked from the data.

PT's isolation reads content off the frozen prefix (defenses/content.py): a sample's nearest
neighbours in the prefix's features vote for a label. So the depth is picked by how well each
prefix describes the data's content: the share of a label's samples whose neighbours' majority is
that label, at every depth from 1 to `deepest`.

- A median over labels, not a mean: a poisoned target label (or a few) cannot move it, so poison
  does not steer the choice. Dirty-label poison disagrees with its label more at deeper prefixes,
  which a mean over all samples would read as worse content (Fashion-MNIST 5k, BadNets 10%:
  poisoned samples' disagreement 43%, 57%, 79% at depths 1, 2, 3).
- The deepest depth whose agreement is tied with the best is taken: deeper random features describe
  more than pixels do, and leave less to train (partial-train caches the frozen prefix's output). A
  tie is a difference within TIE_STANDARD_ERRORS binomial standard errors of the best depth's
  agreement, over the median label's sample count: the null model is that two depths describe
  content equally and the measured shares differ by sampling alone.
- `deepest` leaves at least one block of convolutions trainable besides the head (blocks − 2):
  a head alone on random features is a linear model that barely learns a trigger.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable

import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.content import content_features, neighbour_votes
from ptdefense.models.blocknet import BlockNet

TIE_STANDARD_ERRORS = 2.0
SAMPLE_LIMIT = 10_000  # samples the choice reads (seeded): the kNN is N² and the share's error ~1/√N
MIN_LABEL_SIZE = 20  # labels with fewer samples in the sample give no share


def deepest_auto_depth(block_count: int) -> int:
    """The deepest prefix `auto` may freeze: every block but the last convolutional one and the head."""
    return max(1, block_count - 2)


def label_agreement(votes: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[int, float]:
    """Per label (with at least MIN_LABEL_SIZE samples): the share whose neighbours' majority is the label."""
    agrees = votes.argmax(1) == labels
    return {label: float(agrees[labels == label].float().mean()) for label in range(num_classes)
            if int((labels == label).sum()) >= MIN_LABEL_SIZE}


def deepest_tied_depth(agreement: dict[int, float], label_size: float) -> tuple[int, float]:
    """The deepest depth whose agreement is within TIE_STANDARD_ERRORS binomial standard errors (of the
    best share, over `label_size` samples) of the best depth's; and that tolerance."""
    best = max(agreement.values())
    tolerance = TIE_STANDARD_ERRORS * math.sqrt(best * (1 - best) / label_size) if label_size > 0 else 1.0
    return max(depth for depth, share in agreement.items() if share >= best - tolerance), tolerance


def choose_freeze_layers(model, train: ImageSet, num_classes: int, deepest: int, device: torch.device,
                         seed: int) -> tuple[int, dict]:
    """The depth `auto` picks, and what it read: each depth's median label agreement and the tie margin.

    `model` is the partial model before freezing (BatchNorm statistics already re-estimated), built
    from the same seed as the one partial-train then trains, so the prefix judged is the prefix used."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(train), generator=generator)[:SAMPLE_LIMIT].sort().values
    images, labels = train.images[chosen], train.labels[chosen]
    agreement: dict[int, float] = {}
    label_sizes = torch.bincount(labels, minlength=num_classes)
    median_size = statistics.median([int(size) for size in label_sizes if int(size) >= MIN_LABEL_SIZE] or [0])
    for depth in range(1, deepest + 1):
        votes = neighbour_votes(content_features(model, images, depth, device), labels, num_classes)
        shares = label_agreement(votes, labels, num_classes)
        agreement[depth] = statistics.median(shares.values()) if shares else 0.0
    depth, tolerance = deepest_tied_depth(agreement, median_size)
    return depth, {"freeze_layers_chosen": depth, "sample_count": int(chosen.numel()),
                   "median_label_agreement": {str(d): round(share, 6) for d, share in agreement.items()},
                   "tie_tolerance": round(tolerance, 6)}


def resolve_freeze_layers(requested: int | str, build: Callable[[int], BlockNet], train: ImageSet, num_classes: int,
                          block_count: int, device: torch.device, seed: int) -> tuple[BlockNet, int, dict]:
    """The partial model and its frozen depth, as params ask: a number as is, or `auto` chosen above.

    `build(depth)` makes the partial model frozen at `depth`. With `auto`, the model built for the
    deepest depth is probed, then re-frozen at the chosen one: freezing does not touch the weights or
    the BatchNorm statistics, so it is the model `build(chosen)` would make, built once."""
    if requested != "auto":
        return build(int(requested)), int(requested), {}
    deepest = deepest_auto_depth(block_count)
    model = build(deepest)
    depth, choice = choose_freeze_layers(model, train, num_classes, deepest, device, seed)
    model.freeze_prefix(depth)
    return model, depth, choice
