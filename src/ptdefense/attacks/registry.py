"""The attacks by name: importing this module registers every attack module."""

from __future__ import annotations

from typing import Any

from ptdefense.attacks import badnets, blend, label_consistent, none, sig, trojan, wanet  # noqa: F401  (registers)
from ptdefense.attacks.base import _REGISTRY, Attack
from ptdefense.attacks.settings import ATTACK_SETTINGS, attack_names
from ptdefense.schema import StrictSection

if set(_REGISTRY) != set(ATTACK_SETTINGS) or any(_REGISTRY[name].Settings is not ATTACK_SETTINGS[name]
                                                 for name in _REGISTRY):
    raise RuntimeError("attacks/settings.py and the registered attack modules disagree on the attacks or their "
                       f"settings: {sorted(_REGISTRY)} against {attack_names()}")

__all__ = ["attack_class", "attack_names", "build_attack"]


def attack_class(name: str) -> type[Attack]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(attack_names())}") from None


def build_attack(name: str, num_classes: int, poison_rate: float | None = None, target_label: int = 0,
                 seed: int = 0, settings: StrictSection | dict[str, Any] | None = None) -> Attack:
    cls = attack_class(name)
    if isinstance(settings, dict):
        settings = cls.Settings(**settings)
    return cls(num_classes, poison_rate, target_label, seed, settings)
