"""PT, Partial Train and Isolate: freeze a prefix, train the rest, isolate by loss, retrain clean.

The partial model (partial-train) and the clean model (finetune) are built here; the isolation
rules (isolate) live in defenses/isolation.py, so that changing one re-runs only its stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ptdefense.data.dataset import ImageSet
from ptdefense.models.blocknet import BlockNet
from ptdefense.models.registry import build_model
from ptdefense.training import EpochCallback, FitConfig, fit, to_input


@torch.no_grad()
def recalibrate_batchnorm(model: BlockNet, images: torch.Tensor, device: torch.device, seed: int,
                          sample_count: int = 8192, batch_size: int = 512) -> None:
    """Re-estimate every BatchNorm's running statistics on a seeded sample of the data.

    A frozen, randomly initialised block keeps BN statistics of mean 0 / variance 1, which do not
    match its real activations and shrink the features it passes on (std ≈ 0.05 at the head was
    measured with four frozen blocks). Cumulative averages over real batches fix that.
    """
    model.to(device=device, memory_format=torch.channels_last)
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved_momentum = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average
    was_training = model.training
    prefix = model.frozen_prefix
    model.frozen_prefix = 0
    nn.Module.train(model, True)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(images.shape[0], generator=generator)[: min(sample_count, images.shape[0])]
    for start in range(0, chosen.numel(), batch_size):
        model(to_input(images[chosen[start:start + batch_size]], device))
    for norm, momentum in zip(norms, saved_momentum):
        norm.momentum = momentum
    model.frozen_prefix = prefix
    model.train(was_training)


def build_partial_model(architecture: str, in_channels: int, num_classes: int, width: int | None,
                        freeze_layers: int, frozen_bn: str, train_images: torch.Tensor,
                        device: torch.device, seed: int) -> BlockNet:
    """A fresh model whose first `freeze_layers` blocks keep their random initialisation."""
    torch.manual_seed(seed)
    model = build_model(architecture, in_channels, num_classes, width)
    if freeze_layers and frozen_bn == "recalibrate":
        recalibrate_batchnorm(model, train_images, device, seed)
    model.freeze_prefix(freeze_layers)
    return model


def unlearn_indices(choice: str, isolated_indices, confident_indices) -> torch.Tensor | None:
    """The isolated samples the finetune pushes away from their labels (`finetune.unlearn`): those the
    final cut is sure of (`confident`), every one (`all`), or none (`none`: None)."""
    chosen = {"confident": confident_indices, "all": isolated_indices, "none": None}[choice]
    return None if chosen is None else torch.as_tensor(chosen).long()


def finetune_model(model: BlockNet, retained: ImageSet, isolated: ImageSet | None, config: FitConfig,
                   device: torch.device, seed: int, unlearn_weight: float,
                   on_epoch_end: EpochCallback | None = None) -> list[dict[str, float]]:
    """Train on the retained samples; with `isolated`, push the suspects away from their labels."""
    model.freeze_prefix(0)
    suppress = isolated if isolated is not None and len(isolated) and unlearn_weight > 0 else None
    return fit(model, retained, config, device, seed, suppress=suppress, suppress_weight=unlearn_weight,
               on_epoch_end=on_epoch_end, description="finetune")
