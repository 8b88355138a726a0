"""The models by name and their block counts, without importing torch (the params schema checks
`model.name` and `freeze_layers` against these before any heavy import). registry.py holds the
builders and checks, on import, that it builds exactly these names."""

from __future__ import annotations

BLOCK_COUNTS: dict[str, int] = {
    "resnet_small": 5,  # stem, layer1, layer2, layer3, head
    "resnet18": 6,  # stem, layer1..layer4, head
    "preact_resnet18": 6,
    "vgg_small": 5,  # stage1..stage4, head
}


def model_names() -> list[str]:
    return sorted(BLOCK_COUNTS)


def num_blocks(name: str) -> int:
    try:
        return BLOCK_COUNTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(model_names())}") from None
