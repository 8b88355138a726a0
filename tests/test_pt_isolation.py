"""PT's isolation rules: hand-made cases, then the whole PT isolation on real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptdefense.attacks.registry import build_attack
from ptdefense.data.errors import DatasetUnavailable
from ptdefense.data.loading import load_dataset
from ptdefense.defenses.isolation import isolate_lowest_loss, isolate_samples
from ptdefense.defenses.pt import build_partial_model, unlearn_indices
from ptdefense.metrics import isolation_metrics
from ptdefense.params import IsolationParams
from ptdefense.training import FitConfig, fit


def test_lowest_loss_takes_exactly_the_ratio_and_breaks_ties_by_index():
    losses = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.9, 0.1, 0.0, 0.7, 0.2, 0.4])
    result = isolate_lowest_loss(losses, 0.2)
    assert result.isolated.tolist() == [1, 3]  # three zeros tie; the lowest indices win
    assert isolate_lowest_loss(losses, 0.5).isolated.tolist() == [1, 3, 5, 6, 8]
    assert torch.equal(result.scores, -losses)


@pytest.fixture(scope="module")
def fashion_mnist_subset():
    try:
        train = load_dataset("fashion_mnist", Path("/nonexistent"), download=False, train_limit=12000).train
    except DatasetUnavailable as error:
        pytest.fail(f"Fashion-MNIST is needed (apt-get install dataset-fashion-mnist): {error}")
    attack = build_attack("badnets", 10, poison_rate=0.1, target_label=0, seed=0)
    return attack.poison(train)


@pytest.fixture(scope="module")
def partial_model(fashion_mnist_subset):
    """Partial training (3 of 5 blocks frozen) on 12k real images."""
    data = fashion_mnist_subset.data
    device = torch.device("cpu")
    model = build_partial_model("resnet_small", 1, 10, None, 3, "recalibrate", data.images, device, seed=0)
    fit(model, data, FitConfig(epochs=6, batch_size=128, lr=0.05, precision="fp32"), device, seed=1)
    return model


def test_the_finetune_unlearns_what_finetune_unlearn_names():
    import numpy as np

    isolated, confident = np.array([7, 2, 9, 4], dtype=np.int64), np.array([2, 9], dtype=np.int64)
    assert unlearn_indices("confident", isolated, confident).tolist() == [2, 9]
    assert unlearn_indices("all", isolated, confident).tolist() == [7, 2, 9, 4]
    assert unlearn_indices("none", isolated, confident) is None
    assert unlearn_indices("confident", isolated, confident).dtype == torch.int64  # indexes an ImageSet


def test_pt_isolation_finds_badnets_poison_on_real_fashion_mnist(fashion_mnist_subset, partial_model):
    """The whole auto rule (candidates, held-out quarantine test, two rounds) on 12k real images,
    BadNets 10%: only the target is confirmed, and the poison is isolated nearly exactly."""
    data, truth = fashion_mnist_subset.data, fashion_mnist_subset.poison_indices
    settings = IsolationParams(precision="fp32", min_steps=400)
    result, losses = isolate_samples(partial_model, data, settings, 10, "resnet_small", None, 3,
                                     torch.device("cpu"), seed=2)
    assert result.details["suspicious_classes"] == [0], result.details.get("confirmation")
    assert "0" in result.details["candidates"]
    assert result.details["confirmation"]["0"]["p_value"] < 1e-6
    scores = isolation_metrics(result.isolated, truth, len(data))
    assert scores["isolation_precision"] >= 0.95, scores
    assert scores["isolation_recall"] >= 0.95, scores
    assert losses.shape == (len(data),)
