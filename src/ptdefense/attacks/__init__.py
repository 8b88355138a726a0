"""Backdoor attacks: a shared interface and a registry by name (one module per attack)."""

from ptdefense.attacks.base import (Attack, PoisonedTrainSet, TriggeredTestSet, attack_class, attack_names,
                                    build_attack, register_attack)

# Importing a module registers its attack: adding an attack is one new module listed here.
from ptdefense.attacks import badnets, blend, label_consistent, none, sig, trojan, wanet  # noqa: E402,F401

__all__ = ["Attack", "PoisonedTrainSet", "TriggeredTestSet", "attack_class", "attack_names", "build_attack",
           "register_attack"]
