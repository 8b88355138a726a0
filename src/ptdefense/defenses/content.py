"""What the frozen prefix says a sample shows, against the label it carries.

PT's frozen blocks keep their random initialisation: they never see a label, so their features
describe content only (random convolutions keep much of it: a 10-nearest-neighbour vote in them
agrees with 90% of MNIST's clean labels). The trained blocks learn the labels, trigger included.
Dirty-label poison is where the two disagree in a particular way:

- its content points to another class (its neighbours in the frozen features carry other labels);
- yet the partial model fits its label easily, because of the trigger.

The prefix is shown a view of each image that keeps its shapes and drops what a trigger can share
across images without being content (`content_view`): the image's own brightness and contrast, and
detail finer than a pixel or two. Blend mixes one pattern into every poisoned image, which shifts
their brightness and contrast together; in the raw view the poisoned images are each other's nearest
neighbours, all carrying the target label, so none of them disagrees. Measured on the frozen prefix
alone (freeze 3, no training), share of poisoned samples whose content disagrees with their label,
raw view → this view: Blend 10% MNIST 5k 0% → 96%, Fashion-MNIST 5k 16% → 94%, Fashion-MNIST 15k
9% → 91%; Trojan 46% → 75%, WaNet 86% → 93%, BadNets MNIST 5k 61% → 75%, the unseen trigger 95% →
96%; clean samples' disagreement fell on every set (MNIST 5k 9.4% → 8.1%, Fashion-MNIST 5k 19.1% →
17.4%). See docs/method.md.

A clean sample whose content points elsewhere is a natural ambiguity (an 8 that looks like a 3),
and the partial model finds it hard: measured on MNIST 5k and Fashion-MNIST 60k (BadNets 10%), clean
labels' disagreeing samples had 3 to 800 times the median loss of their agreeing ones, and at most
28% of them fell below that median; the poisoned label's had 0.1 to 1.3 times, and 46 to 81%.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptdefense.models.blocknet import BlockNet
from ptdefense.training import INFERENCE_BATCH_SIZE, to_input

GRID = 4  # frozen feature maps are average-pooled to GRID × GRID: coarse layout, not pixels
DIMENSIONS = 64  # then projected on their leading principal components (speed: kNN is N² · d)
NEIGHBOURS = 10
VIEW_SPREAD = 50.0  # each image is rescaled to this standard deviation (uint8 units) around mid-grey
# Pixels: a Gaussian low-pass before the prefix (of 1.0, 1.5 and 2.0, 1.0 split poison from clean best).
VIEW_BLUR_SIGMA = 1.0


def content_view(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → the view the frozen prefix judges content on: each image standardised by
    its own mean and standard deviation (to mid-grey ± VIEW_SPREAD), then Gaussian-blurred.

    Why: a trigger mixed into every poisoned image (Blend) moves their brightness and contrast together
    and adds pixel-scale texture, which makes them each other's neighbours whatever they show."""
    from torchvision.transforms.v2.functional import gaussian_blur

    pixels = images.float()
    mean = pixels.mean((1, 2, 3), keepdim=True)
    spread = pixels.std((1, 2, 3), keepdim=True).clamp(min=1.0)  # a flat image stays flat
    standardised = ((pixels - mean) / spread * VIEW_SPREAD + 128.0).clamp(0.0, 255.0)
    radius = max(1, round(2 * VIEW_BLUR_SIGMA))
    blurred = gaussian_blur(standardised, kernel_size=[2 * radius + 1] * 2, sigma=[VIEW_BLUR_SIGMA] * 2)
    return blurred.round().to(torch.uint8)


def content_features(model: BlockNet, images: torch.Tensor, freeze_layers: int, device: torch.device,
                     batch_size: int = INFERENCE_BATCH_SIZE, view: bool = True) -> torch.Tensor:
    """The frozen prefix's features of each image's `content_view` (the image itself with `view`
    False), pooled and projected: one row per image, unit length.

    With nothing frozen there is no label-free network to ask, so the pooled pixels stand in."""
    model.to(device=device, memory_format=torch.channels_last).eval()
    prefix = list(model.blocks.values())[:freeze_layers]
    pooled = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            features = to_input(content_view(batch) if view else batch, device)
            for block in prefix:
                features = block(features)
            pooled.append(F.adaptive_avg_pool2d(features.float(), GRID).flatten(1).cpu())
    features = torch.cat(pooled)
    features = features - features.mean(0)
    if features.shape[1] > DIMENSIONS and features.shape[0] > DIMENSIONS:
        # Exact principal components (eigenvectors of the d × d scatter, d ≤ a few hundred): deterministic,
        # unlike a randomised low-rank PCA; the signs are fixed so that the output is reproducible.
        _, vectors = torch.linalg.eigh((features.T @ features).double())
        components = vectors[:, -DIMENSIONS:].flip(1)
        signs = torch.sign(components[components.abs().argmax(0), torch.arange(DIMENSIONS)])
        features = features @ (components * signs).float()
    return F.normalize(features, dim=1)


def neighbour_votes(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    neighbours: int = NEIGHBOURS, chunk: int = 1024) -> torch.Tensor:
    """(N, num_classes): the share of each sample's nearest neighbours (cosine, itself excluded)
    that carry each label."""
    count = labels.numel()
    neighbours = min(neighbours, count - 1)
    votes = torch.zeros(count, num_classes)
    if neighbours < 1:
        return votes
    for start in range(0, count, chunk):
        similarity = features[start:start + chunk] @ features.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = float("-inf")
        nearest = similarity.topk(neighbours, dim=1).indices
        votes[start:start + chunk] = F.one_hot(labels[nearest], num_classes).float().mean(1)
    return votes


def easy_disagreement(votes: torch.Tensor, losses: torch.Tensor, labels: torch.Tensor,
                      num_classes: int) -> tuple[torch.Tensor, dict[str, dict[str, float]]]:
    """Samples whose content points to another label (the neighbours' majority) yet whose loss
    under the partial model is at most the median loss of their label's agreeing samples; and,
    per label, the share of its samples that disagree and the share that disagree easily."""
    disagrees = votes.argmax(1) != labels
    easy = torch.zeros_like(disagrees)
    shares: dict[str, dict[str, float]] = {"content_disagreement": {}, "easy_disagreement": {}}
    for label in range(num_classes):
        members = labels == label
        count = int(members.sum())
        if count == 0:
            continue
        agreeing = members & ~disagrees
        reference = float(losses[agreeing].median()) if agreeing.any() else float("inf")
        easy |= members & disagrees & (losses <= reference)
        shares["content_disagreement"][str(label)] = float((members & disagrees).sum()) / count
        shares["easy_disagreement"][str(label)] = float((members & easy).sum()) / count
    return easy, shares


def matched_controls(features: torch.Tensor, queries: torch.Tensor, eligible: torch.Tensor,
                     chunk: int = 1024) -> torch.Tensor:
    """For each query (in order), its nearest eligible sample by cosine similarity (unit-length
    `features`), each sample used at most once: one control per query while any is left."""
    free = eligible.clone()
    controls = []
    for start in range(0, queries.numel(), chunk):
        similarity = features[queries[start:start + chunk]] @ features.T
        for row in similarity:
            row[~free] = float("-inf")
            nearest = int(row.argmax())
            if not free[nearest]:
                return torch.tensor(controls, dtype=torch.int64)
            free[nearest] = False
            controls.append(nearest)
    return torch.tensor(controls, dtype=torch.int64)
