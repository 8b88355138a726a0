"""The interface every attack implements, and the registry that finds one by `attack.name`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ptdefense.data.dataset import ImageSet

_REGISTRY: dict[str, type["Attack"]] = {}


def register_attack(cls: type["Attack"]) -> type["Attack"]:
    if cls.name in _REGISTRY:
        raise ValueError(f"attack {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def attack_names() -> list[str]:
    return sorted(_REGISTRY)


def build_attack(name: str, num_classes: int, **settings: Any) -> "Attack":
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(attack_names())}") from None
    return cls(num_classes=num_classes, **settings)


@dataclass(frozen=True)
class PoisonedTrainSet:
    data: ImageSet  # the training set as the attacker leaves it
    poison_indices: torch.Tensor  # int64, sorted: ground truth, for evaluation only


@dataclass(frozen=True)
class TriggeredTestSet:
    data: ImageSet  # triggered images with their TRUE labels (for robust accuracy)
    attack_targets: torch.Tensor  # the label the attacker wants for each image (for ASR)


class Attack(ABC):
    """An attack = a pure trigger on uint8 batches + a choice of victims + a relabelling."""

    name: ClassVar[str]
    clean_label: ClassVar[bool] = False

    def __init__(self, num_classes: int, poison_rate: float, target_label: int, seed: int = 0) -> None:
        self.num_classes = num_classes
        self.poison_rate = poison_rate
        self.target_label = target_label
        self.seed = seed

    @abstractmethod
    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        """Return triggered copies of a uint8 (N, C, H, W) batch; the input is left untouched."""

    def attack_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The label the attacker wants a triggered image of true label `labels` to get."""
        return torch.full_like(labels, self.target_label)

    def candidate_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """Samples the attack may poison: those whose label it changes (all-to-one: non-target)."""
        return self.attack_targets(labels) != labels

    def select_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Exactly round(poison_rate × N) victims, drawn with the attack's own seed."""
        count = round(self.poison_rate * labels.shape[0])
        candidates = torch.nonzero(self.candidate_mask(labels)).flatten()
        if count > candidates.numel():
            raise ValueError(
                f"attack {self.name!r} needs {count} samples to poison but only {candidates.numel()} are eligible; "
                "lower attack.poison_rate"
            )
        generator = torch.Generator().manual_seed(self.seed)
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
        return torch.sort(chosen).values

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        return labels if self.clean_label else self.attack_targets(labels)

    def poison(self, train: ImageSet) -> PoisonedTrainSet:
        indices = self.select_indices(train.labels)
        images, labels = train.images.clone(), train.labels.clone()
        images[indices] = self.apply_trigger(train.images[indices])
        labels[indices] = self.relabel(train.labels[indices])
        return PoisonedTrainSet(ImageSet(images, labels), indices)

    def triggered_test(self, test: ImageSet) -> TriggeredTestSet:
        """Trigger the test images that can show an attack's success (true label ≠ its target)."""
        targets = self.attack_targets(test.labels)
        keep = torch.nonzero(targets != test.labels).flatten()
        triggered = ImageSet(self.apply_trigger(test.images[keep]), test.labels[keep].clone())
        return TriggeredTestSet(triggered, targets[keep])
