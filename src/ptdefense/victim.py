"""The victim's recipe, shared by train-backdoored (on the poisoned set) and clean-reference (on the
truly clean samples): a fresh model trained with params.train, its test scores logged per epoch."""

from __future__ import annotations

import time

import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.models.blocknet import BlockNet
from ptdefense.models.registry import build_from_spec
from ptdefense.params import Params
from ptdefense.scoring import test_set_scorer
from ptdefense.stage import epoch_logger, not_per_epoch
from ptdefense.training import FitConfig, fit


def train_victim(params: Params, spec: dict, train: ImageSet, device, run, description: str
                 ) -> tuple[BlockNet, dict, dict]:
    """(the trained model, its final metrics, the part of them not yet logged per epoch)."""
    torch.manual_seed(params.seed)
    model = build_from_spec(spec)
    config = FitConfig(**params.train.model_dump())
    scores = test_set_scorer(model, device)
    started = time.perf_counter()
    history = fit(model, train, config, device, params.seed, on_epoch_end=epoch_logger(run, "", scores),
                  description=description)
    final = {**history[-1], **scores(), "wall_seconds": time.perf_counter() - started,
             "sample_epochs": len(history) * len(train)}
    return model, final, not_per_epoch(final, history, evaluated=True)
