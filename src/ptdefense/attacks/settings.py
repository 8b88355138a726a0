"""Every attack's own params section (`attack.<name>` in params.yaml), without torch.

The params schema is built from this table, so validating params.yaml never imports an attack's
implementation. registry.py checks on import that the registered attacks are exactly these names;
adding an attack is its module, its line here, and its test.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from ptdefense.models.catalogue import model_names
from ptdefense.schema import StrictSection


class NoSettings(StrictSection):
    """An attack without knobs (none): no params section."""


class PatchSettings(StrictSection):  # badnets, badnets_all2all: a solid square, bottom-right
    patch_size: Annotated[int, Field(ge=1, le=64)] = 3
    patch_value: Annotated[int, Field(ge=0, le=255)] = 255


class BlendSettings(StrictSection):
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2


class SigSettings(StrictSection):
    delta: Annotated[float, Field(gt=0.0, le=255.0)] = 20.0
    frequency: Annotated[float, Field(gt=0.0, le=64.0)] = 6.0


class TrojanSettings(StrictSection):
    size: Annotated[int, Field(ge=3, le=64)] = 5
    margin: Annotated[int, Field(ge=0, le=64)] = 1  # pixels between the pattern and the image border


class WanetSettings(StrictSection):
    k: Annotated[int, Field(ge=2, le=64)] = 4  # control-grid size of the warping field
    s: Annotated[float, Field(gt=0.0, le=100.0)] = 0.5  # warp strength
    grid_rescale: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    cross_ratio: Annotated[float, Field(ge=0.0, le=10.0)] = 2.0  # noise-mode samples per poisoned one


class LabelConsistentSettings(StrictSection):
    epsilon: Annotated[float, Field(gt=0.0, le=255.0)] = 16.0  # L∞ budget, in pixel units (16/255)
    pgd_steps: Annotated[int, Field(ge=1, le=1000)] = 10
    step_size: Annotated[float, Field(gt=0.0, le=255.0)] = 4.0  # pixel units per step
    surrogate_model: str = "resnet_small"
    surrogate_epochs: Annotated[int, Field(ge=1, le=1000)] = 2
    patch_size: Annotated[int, Field(ge=2, le=32)] = 3  # side of each corner checkerboard

    @field_validator("surrogate_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in model_names():
            raise ValueError(f"unknown model {value!r}; valid choices: {', '.join(model_names())}")
        return value


ATTACK_SETTINGS: dict[str, type[StrictSection]] = {
    "badnets": PatchSettings,
    "badnets_all2all": PatchSettings,
    "blend": BlendSettings,
    "label_consistent": LabelConsistentSettings,
    "none": NoSettings,
    "sig": SigSettings,
    "trojan": TrojanSettings,
    "wanet": WanetSettings,
}


def attack_names() -> list[str]:
    return sorted(ATTACK_SETTINGS)


def attack_settings(name: str) -> type[StrictSection]:
    try:
        return ATTACK_SETTINGS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(attack_names())}") from None
