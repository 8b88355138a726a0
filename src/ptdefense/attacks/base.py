"""The interface every attack implements, and the registry that finds one by `attack.name`.

An attack is one module with one class: its `Settings` (a strict pydantic model, which becomes the
`attack.<name>` section of params.yaml), a pure trigger on uint8 batches, a choice of victims and
a relabelling. Its settings live in settings.py, so that params validation needs no torch; registry.py
imports every attack module and checks the two agree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ptdefense.data.dataset import ImageSet
from ptdefense.attacks.settings import NoSettings
from ptdefense.schema import StrictSection

_REGISTRY: dict[str, type["Attack"]] = {}


def register_attack(cls: type["Attack"]) -> type["Attack"]:
    if cls.name in _REGISTRY:
        raise ValueError(f"attack {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class PoisonedTrainSet:
    data: ImageSet  # the training set as the attacker leaves it
    poison_indices: torch.Tensor  # int64, sorted: ground truth, for evaluation only
    # Samples the attack altered without making them poison (WaNet's noise mode: warped images that
    # keep their true label). Not backdoor samples, but not untouched either.
    cross_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))


@dataclass(frozen=True)
class TriggeredTestSet:
    data: ImageSet  # triggered images with their TRUE labels (for robust accuracy)
    attack_targets: torch.Tensor  # the label the attacker wants for each image (for ASR)


class Attack(ABC):
    """An attack = a pure trigger on uint8 batches + a choice of victims + a relabelling."""

    name: ClassVar[str]
    # Clean-label attacks poison only target-class images and never change a label.
    clean_label: ClassVar[bool] = False

    Settings: ClassVar[type[StrictSection]] = NoSettings  # the `attack.<name>` section (attacks/settings.py)

    def __init__(self, num_classes: int, poison_rate: float | None, target_label: int, seed: int = 0,
                 settings: StrictSection | None = None) -> None:
        if not 0 <= target_label < num_classes:
            raise ValueError(f"target_label {target_label} is out of range 0..{num_classes - 1}")
        self.num_classes = num_classes
        self.poison_rate = poison_rate
        self.target_label = target_label
        self.seed = seed
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        """Return triggered copies of a uint8 (N, C, H, W) batch; the input is left untouched."""

    def attack_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The label the attacker wants a triggered image of true label `labels` to get."""
        return torch.full_like(labels, self.target_label)

    def candidate_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """Samples the attack may poison: dirty-label, those whose label it changes; clean-label,
        the target class."""
        if self.clean_label:
            return labels == self.target_label
        return self.attack_targets(labels) != labels

    def poison_count(self, labels: torch.Tensor) -> int:
        """round(poison_rate × N); without a rate, the attack's standard one (see `standard_count`)."""
        if self.poison_rate is not None:
            return round(self.poison_rate * labels.shape[0])
        return self.standard_count(labels)

    def standard_count(self, labels: torch.Tensor) -> int:
        # Dirty-label benchmarks poison 10% of the training set; clean-label ones, a share of the
        # target class (half here), since poisoning all of it leaves nothing clean to learn it from.
        if self.clean_label:
            return int(self.candidate_mask(labels).sum()) // 2
        return round(0.1 * labels.shape[0])

    def select_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Exactly `poison_count` victims among the candidates, drawn with the attack's own seed."""
        count = self.poison_count(labels)
        candidates = torch.nonzero(self.candidate_mask(labels)).flatten()
        if count > candidates.numel():
            kind = "target-class" if self.clean_label else "eligible"
            raise ValueError(
                f"attack {self.name!r} needs {count} samples to poison but only {candidates.numel()} are {kind}; "
                "lower attack.poison_rate (or set it to null for the attack's standard rate)"
            )
        generator = torch.Generator().manual_seed(self.seed)
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
        return torch.sort(chosen).values

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.clone() if self.clean_label else self.attack_targets(labels)

    def poison_images(self, train: ImageSet, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """What the victims `indices` of `train` look like once poisoned: by default, just triggered."""
        return self.apply_trigger(train.images[indices])

    def poison(self, train: ImageSet, device: torch.device | str = "cpu") -> PoisonedTrainSet:
        indices = self.select_indices(train.labels)
        images, labels = train.images.clone(), train.labels.clone()
        images[indices] = self.poison_images(train, indices, torch.device(device))
        labels[indices] = self.relabel(train.labels[indices])
        return PoisonedTrainSet(ImageSet(images, labels), indices)

    def triggered_test(self, test: ImageSet) -> TriggeredTestSet:
        """Trigger the test images that can show an attack's success (true label ≠ its target)."""
        targets = self.attack_targets(test.labels)
        keep = torch.nonzero(targets != test.labels).flatten()
        triggered = ImageSet(self.apply_trigger(test.images[keep]), test.labels[keep].clone())
        return TriggeredTestSet(triggered, targets[keep])

    def _generator(self, offset: int = 0) -> torch.Generator:
        """A private RNG stream derived from the attack's seed (the global RNG is never touched)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)


def blend_uint8(images: torch.Tensor, pattern: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """(1 − α)·image + α·pattern, rounded back to uint8."""
    mixed = images.float() * (1 - alpha) + pattern.float() * alpha
    return mixed.round_().clamp_(0, 255).to(torch.uint8)


def check_size(images: torch.Tensor, size: int, what: str) -> None:
    if images.shape[-1] < size or images.shape[-2] < size:
        raise ValueError(f"{what} {size} exceeds the image size {tuple(images.shape[-2:])}")
