"""The one training loop every stage uses, plus batched inference.

Defenses differ only in what they pass to `fit`: which parameters are trainable (a model with a
frozen prefix), which samples, and whether a set of suspects is pushed away from its labels.
Datasets stay in memory as uint8 tensors; batches are converted to float on the fly, which on two
CPU cores is far faster than per-sample transforms behind DataLoader workers.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ptdefense.augment import augment_batch
from ptdefense.checkpoints import current_scope, fingerprint, load_checkpoint, save_checkpoint
from ptdefense.data.dataset import ImageSet

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    precision: str = "bf16"
    # The least number of optimiser steps: on a small set, `epochs` alone would train a handful of
    # steps (3 epochs of 4,000 images at batch 128 are 94), and the model would learn nothing.
    min_steps: int = 0
    # one_cycle: this project's short budgets (warm-up, then cosine annealing to zero).
    # cosine: plain cosine annealing from `lr` over all steps (BackdoorBench's recipe, presets/).
    schedule: str = "one_cycle"
    augment: str = "none"  # none | crop_flip (augment.py)

    def for_samples(self, count: int) -> "FitConfig":
        """This config with `epochs` raised, if needed, so that `count` samples give at least `min_steps`
        optimiser steps."""
        steps_per_epoch = max(1, -(-count // self.batch_size))
        return replace(self, epochs=max(self.epochs, -(-self.min_steps // steps_per_epoch)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available; use device: auto or cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device: mps was requested but MPS is not available; use device: auto or cpu")
    return torch.device(requested)


def training_memory_format(batch_sizes: set[int]) -> torch.memory_format:
    """channels_last (faster on CPU) only when every training batch has an even size.

    On torch 2.14.1's CPU build, training in channels_last on a batch of odd size (3, 5, 21, 85
    and 101 images were tried) corrupted the heap: `MALLOC_CHECK_=3` aborts at once, and without
    it the process crashed later. Even sizes (4, 6, 96, 128) were clean, so any odd batch falls
    back to the default layout for the whole fit.
    """
    return torch.channels_last if all(size % 2 == 0 for size in batch_sizes) else torch.contiguous_format


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W) → float in [-1, 1], channels_last (faster convolutions on CPU)."""
    batch = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    return batch.contiguous(memory_format=torch.channels_last)


# Evaluation batches: on this 2-core CPU, resnet_small's fp32 inference ran at 6,188 images/s with
# batches of 256 and 3,866 with 1,024 (benchmarks/speed.py --levers; 5,400 against 4,300 in a
# micro-benchmark). The logits were bit-identical on CPU; on CUDA other kernels may be chosen.
INFERENCE_BATCH_SIZE = 256


def _autocast(device: torch.device, precision: str):
    enabled = precision == "bf16" and device.type in ("cpu", "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def suppression_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−log(1 − p(label)): bounded "unlearning" that pushes a sample away from its label.

    Unlike plain gradient ascent on cross-entropy it cannot diverge, so it can run alongside
    normal training from the first step.
    """
    probabilities = F.softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
    return -torch.log1p(-probabilities.clamp(max=1 - 1e-6)).mean()


def fit(
    model: nn.Module,
    train: ImageSet,
    config: FitConfig,
    device: torch.device,
    seed: int,
    suppress: ImageSet | None = None,
    suppress_weight: float = 1.0,
    on_epoch_end: EpochCallback | None = None,
    description: str = "train",
    objective: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train the trainable parameters of `model` with SGD + one-cycle schedule; return epoch stats.

    `objective` maps the batch's mean cross-entropy to the loss that is minimised (default: itself).
    ABL passes its flooding/LGA loss here, and its unlearning passes −cross-entropy. The epochs run
    are `config.for_samples(len(train)).epochs` (the history has one entry per epoch).
    """
    config = config.for_samples(len(train))
    suppress_size = max(1, round(config.batch_size * len(suppress) / len(train))) if suppress is not None and len(suppress) else 0
    remainder = len(train) % config.batch_size
    batch_sizes = {min(config.batch_size, len(train)) + suppress_size} | ({remainder + suppress_size} if remainder else set())
    memory_format = training_memory_format(batch_sizes)
    model.to(device=device, memory_format=memory_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    steps_per_epoch = max(1, -(-len(train) // config.batch_size))
    scheduler = learning_rate_schedule(optimizer, config, config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    checkpoint, start_epoch = _resume(model, train, config, seed, description, suppress, suppress_weight,
                                      optimizer, scheduler, generator, history)
    # Partial training: the frozen prefix maps each image to the same features in every epoch, so they
    # are computed once (suppression, used only with nothing frozen, keeps the plain path). It pays
    # from two epochs on (building the cache costs about one epoch of the prefix's forward passes).
    cached = frozen_feature_cache(model, train.images, config.precision, device, memory_format) \
        if suppress is None and config.augment == "none" and config.epochs - start_epoch >= 2 else None
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train), generator=generator)
        suppress_order = torch.randperm(len(suppress), generator=generator) if suppress is not None and len(suppress) else None
        loss_sum, correct, seen, suppress_sum = 0.0, 0, 0, 0.0
        batches = tqdm(range(steps_per_epoch), desc=f"{description} epoch {epoch + 1}/{config.epochs}",
                       leave=False, mininterval=2.0, disable=None)
        for step in batches:
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            images, labels = augment_batch(train.images[index], config.augment, generator), train.labels[index].to(device)
            chosen = None
            if suppress_order is not None:
                # Cycle through the suspects, a few per step in proportion to their share, in the same
                # forward pass (one batch, so BatchNorm never sees a tiny batch of suspects alone).
                start = (step * suppress_size) % len(suppress)
                chosen = suppress_order[torch.arange(start, start + suppress_size) % len(suppress)]
                images = torch.cat([images, suppress.images[chosen]])
            with _autocast(device, config.precision):
                if cached is not None:
                    all_logits = model.forward_trainable(cached[index].contiguous(memory_format=memory_format))
                else:
                    all_logits = model(to_input(images, device).contiguous(memory_format=memory_format))
                logits = all_logits[: len(index)]
                # Per-sample losses, then their mean: the reduction the committed results were trained with.
                loss = F.cross_entropy(logits.float(), labels, reduction="none").mean()
                total = objective(loss) if objective is not None else loss
                if chosen is not None:
                    suppressed = suppression_loss(all_logits[len(index):], suppress.labels[chosen].to(device))
                    total = total + suppress_weight * suppressed
                    suppress_sum += float(suppressed.detach()) * len(index)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(index)
        stats = {
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / (time.perf_counter() - started),
        }
        if suppress_order is not None:
            stats["suppression_loss"] = suppress_sum / seen
        history.append(stats)
        if checkpoint is not None:  # before the callback: a kill during evaluation keeps this epoch
            save_checkpoint(checkpoint[0], {
                "fingerprint": checkpoint[1], "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            })
        if on_epoch_end is not None:
            on_epoch_end(epoch, stats)
    return history


def learning_rate_schedule(optimizer: torch.optim.Optimizer, config: FitConfig, total_steps: int):
    """The per-step learning-rate schedule that `config.schedule` names."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule != "one_cycle":
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: one_cycle, cosine")
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.15,
                                               anneal_strategy="cos", cycle_momentum=False)


# The most memory the frozen prefix's cached features may take (default run, freeze_layers=3: 718 MiB;
# CIFAR-10 on resnet18 with 3 frozen blocks would need 3.3 GiB and recomputes them instead).
FEATURE_CACHE_LIMIT_BYTES = 2 * 1024**3


@torch.no_grad()
def frozen_feature_cache(model: nn.Module, images: torch.Tensor, precision: str, device: torch.device,
                         memory_format: torch.memory_format) -> torch.Tensor | None:
    """The frozen prefix's output for every image, or None (nothing frozen, or over the memory limit).

    Measured (resnet_small, bf16, one epoch on 25,600 images): freeze_layers=3 trains at 7,900
    images/s on cached features against 5,850 without, freeze_layers=2 at 4,700 against 3,400, with
    the same losses and bit-identical weights on CPU (`benchmarks/speed.py --levers`, 3 epochs on
    12,800 images: 6,478 against 5,430, and 3,821 against 3,635). With only the first block frozen
    it does not pay (2,700 against 2,900: that block is the cheapest to recompute and has the
    largest output), so then it returns None. The prefix runs in eval mode (frozen BatchNorm), so its output depends on
    neither the epoch nor the other images in the batch.
    """
    if getattr(model, "frozen_prefix", 0) < 2 or len(images) == 0:
        return None
    model.train(model.training)  # BlockNet keeps its frozen blocks in eval mode whatever the mode
    model.to(device=device, memory_format=memory_format)
    with _autocast(device, precision):
        probe = model.frozen_features(to_input(images[:2], device).contiguous(memory_format=memory_format))
    if probe[0].numel() * probe.element_size() * len(images) > FEATURE_CACHE_LIMIT_BYTES:
        return None
    # Filled in place: collecting chunks and concatenating them held the features twice (a peak of
    # 3.8 GiB against 2.4 GiB measured for dvc exp run -S freeze_layers=2).
    cache = torch.empty((len(images), *probe.shape[1:]), dtype=probe.dtype, device=device,
                        memory_format=memory_format if probe.dim() == 4 else torch.contiguous_format)
    for start in range(0, len(images), INFERENCE_BATCH_SIZE):
        batch = to_input(images[start:start + INFERENCE_BATCH_SIZE], device).contiguous(memory_format=memory_format)
        with _autocast(device, precision):
            cache[start:start + INFERENCE_BATCH_SIZE] = model.frozen_features(batch)
    return cache


def _resume(model, train, config, seed, description, suppress, suppress_weight, optimizer,
            scheduler, generator, history) -> tuple[tuple[Path, str] | None, int]:
    """Inside a `checkpointing` scope: this fit's checkpoint slot and fingerprint, and the epoch to
    start from (restoring every piece of training state from a matching checkpoint)."""
    scope = current_scope()
    if scope is None:
        return None, 0
    path = scope.next_slot(description)
    key = fingerprint(scope, description, config, seed,
                      [train.images, train.labels, None if suppress is None else suppress.images,
                       None if suppress is None else suppress.labels], model,
                      # The frozen depth is not in the weights, and `auto` picks it at run time.
                      extra=f"suppress_weight={suppress_weight}|frozen_prefix={getattr(model, 'frozen_prefix', 0)}")
    state = load_checkpoint(path, key)
    if state is None:
        return (path, key), 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    history.extend(state["history"])
    scope.resumed.append(f"{description} after epoch {state['epoch']}/{config.epochs}")
    print(f"resuming {description} after epoch {state['epoch']}/{config.epochs} from {path}", file=sys.stderr)
    return (path, key), int(state["epoch"])


def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device,
                   batch_size: int = INFERENCE_BATCH_SIZE, description: str = "predict") -> torch.Tensor:
    # Outside inference_mode: a layout change made inside it would turn the parameters into
    # inference tensors, which a later fit cannot train (found when evaluating before training).
    model.to(device=device, memory_format=torch.channels_last).eval()
    outputs = []
    with torch.inference_mode():
        for start in tqdm(range(0, images.shape[0], batch_size), desc=description, leave=False, mininterval=2.0,
                          disable=None):
            outputs.append(model(to_input(images[start:start + batch_size], device)).float().cpu())
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


def predict(model: nn.Module, images: torch.Tensor, device: torch.device,
            batch_size: int = INFERENCE_BATCH_SIZE) -> torch.Tensor:
    return predict_logits(model, images, device, batch_size).argmax(1)


def per_sample_loss(model: nn.Module, data: ImageSet, device: torch.device,
                    batch_size: int = INFERENCE_BATCH_SIZE) -> torch.Tensor:
    """Cross-entropy of every sample under `model` (eval mode, fp32), in dataset order."""
    logits = predict_logits(model, data.images, device, batch_size, description="per-sample loss")
    return F.cross_entropy(logits, data.labels, reduction="none")
