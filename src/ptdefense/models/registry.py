"""Model builders by name. Each builder declares its blocks, in forward order."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from ptdefense.models.blocknet import BlockNet


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))


def _basic(in_channels: int, out_channels: int, stride: int) -> BasicBlock:
    return BasicBlock(in_channels, out_channels, stride=stride, downsample=_downsample(in_channels, out_channels, stride))


def _head(channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def resnet_small(in_channels: int, num_classes: int, width: int = 16) -> BlockNet:
    """A ResNet-8-like net (width-2w-4w channels, about 78k parameters at width 16).

    Five blocks: stem, layer1, layer2 (stride 2), layer3 (stride 2), head.
    """
    return BlockNet(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)),
        layer1=_basic(width, width, 1),
        layer2=_basic(width, 2 * width, 2),
        layer3=_basic(2 * width, 4 * width, 2),
        head=_head(4 * width, num_classes),
    ))


def resnet18(in_channels: int, num_classes: int, width: int = 64) -> BlockNet:
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool) from torchvision's ResNet.

    Six blocks: stem, layer1..layer4, head.
    """
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, width_per_group=64)
    if width != 64:
        raise ValueError("resnet18 has a fixed width of 64; set model.width: 64")
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    return BlockNet(OrderedDict(
        stem=stem, layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.fc),
    ))


_BUILDERS: dict[str, tuple[Callable[..., BlockNet], int]] = {
    "resnet_small": (resnet_small, 5),
    "resnet18": (resnet18, 6),
}


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def num_blocks(name: str) -> int:
    try:
        return _BUILDERS[name][1]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(model_names())}") from None


def build_model(name: str, in_channels: int, num_classes: int, width: int | None = None) -> BlockNet:
    try:
        builder, _ = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(model_names())}") from None
    return builder(in_channels, num_classes) if width is None else builder(in_channels, num_classes, width=width)
