"""Model builders by name. Each builder declares its blocks, in forward order."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from ptdefense.models.blocknet import BlockNet
from ptdefense.models.catalogue import BLOCK_COUNTS, model_names
from ptdefense.models.preact import PreActBlock


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


def _torchvision_resnet_init(module: nn.Module) -> nn.Module:
    """The initialisation torchvision's ResNet applies (He-normal convs, BatchNorm 1/0, default Linear)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.constant_(layer.weight, 1)
            nn.init.constant_(layer.bias, 0)
    return module


def resnet18(in_channels: int, num_classes: int, width: int = 64) -> BlockNet:
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool) of torchvision BasicBlocks, about 11.2M parameters.

    Six blocks: stem (conv-BN-ReLU), layer1 (stride 1), layer2, layer3, layer4 (stride 2 each; two
    BasicBlocks per stage), head (avg-pool, linear). `width` is the first stage's channel count;
    the stages have width, 2w, 4w, 8w channels.

    At the default width 64 the layers come from torchvision's `ResNet` itself, exactly as before
    `width` could be changed (same parameter names and, for a given seed, the same initial weights).
    Other widths build the same structure from torchvision's `BasicBlock` with torchvision's init.
    """
    if width == 64:  # built in this order, the seeded initial weights match earlier versions
        net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, width_per_group=64)
        stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        return BlockNet(OrderedDict(
            stem=stem, layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
            head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.fc),
        ))
    stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    stages = OrderedDict()
    channels = width
    for index, (out_channels, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)], start=1):
        stages[f"layer{index}"] = nn.Sequential(_basic(channels, out_channels, stride), _basic(out_channels, out_channels, 1))
        channels = out_channels
    return BlockNet(OrderedDict(
        stem=_torchvision_resnet_init(stem),
        **{name: _torchvision_resnet_init(stage) for name, stage in stages.items()},
        head=_head(channels, num_classes),
    ))


def preact_resnet18(in_channels: int, num_classes: int, width: int = 64) -> BlockNet:
    """CIFAR-style PreAct-ResNet-18 as trained by backdoor benchmarks (BackdoorBench, ABL), about 11.2M parameters.

    Six blocks: stem (a bare 3×3 conv: pre-activation, so no BN/ReLU after it), layer1 (stride 1),
    layer2, layer3, layer4 (stride 2 each; two `PreActBlock`s per stage), head (final BN-ReLU,
    avg-pool, linear). `width` is the first stage's channel count (default 64); the stages have
    width, 2w, 4w, 8w channels. PyTorch's default initialisation, as in those benchmarks.
    """
    blocks: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Conv2d(in_channels, width, 3, padding=1, bias=False))
    channels = width
    for index, (out_channels, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)], start=1):
        blocks[f"layer{index}"] = nn.Sequential(PreActBlock(channels, out_channels, stride), PreActBlock(out_channels, out_channels, 1))
        channels = out_channels
    blocks["head"] = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(channels, num_classes))
    return BlockNet(blocks)


def _vgg_stage(in_channels: int, out_channels: list[int]) -> nn.Sequential:
    """conv3×3-BN-ReLU for each entry, then a 2×2 max-pool in ceil mode (a 1-pixel map stays 1 pixel)."""
    layers: list[nn.Module] = []
    for channels in out_channels:
        layers += [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        in_channels = channels
    layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
    return nn.Sequential(*layers)


def vgg_small(in_channels: int, num_classes: int, width: int = 32) -> BlockNet:
    """A VGG-11-like net with BatchNorm, channels [w, M, 2w, M, 4w, 4w, M, 8w, 8w, M], about 1.13M parameters at width 32.

    Five blocks: stage1 (w), stage2 (2w), stage3 (4w, 4w), stage4 (8w, 8w), each ending in a 2×2
    max-pool, and head (global avg-pool, linear; no VGG MLP classifier). The pools use ceil_mode,
    so a map never shrinks to zero (8×8 → 4, 2, 1, 1; 13×17 → 7×9, 4×5, 2×3, 1×2): any input of
    at least 1×1 works, and the global pool makes the head independent of the input size.
    Convolutions have no bias (BatchNorm follows). torchvision's `make_layers` is not used: it
    hard-codes 3 input channels and floor-mode pools, which would shrink an 8×8 input to nothing.
    """
    return BlockNet(OrderedDict(
        stage1=_vgg_stage(in_channels, [width]),
        stage2=_vgg_stage(width, [2 * width]),
        stage3=_vgg_stage(2 * width, [4 * width, 4 * width]),
        stage4=_vgg_stage(4 * width, [8 * width, 8 * width]),
        head=_head(8 * width, num_classes),
    ))


_BUILDERS: dict[str, Callable[..., BlockNet]] = {
    "resnet_small": resnet_small,
    "resnet18": resnet18,
    "preact_resnet18": preact_resnet18,
    "vgg_small": vgg_small,
}
if set(_BUILDERS) != set(BLOCK_COUNTS):  # a new model needs a builder here and an entry in catalogue.py
    raise ImportError(f"models/catalogue.py and registry.py disagree: {sorted(set(_BUILDERS) ^ set(BLOCK_COUNTS))}")


def build_model(name: str, in_channels: int, num_classes: int, width: int | None = None) -> BlockNet:
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(model_names())}") from None
    model = builder(in_channels, num_classes) if width is None else builder(in_channels, num_classes, width=width)
    avoid_narrow_convolution_bug(model)
    return model


# oneDNN's AVX2 kernels (torch 2.14.1's CPU build) corrupt the heap in the backward pass of convolutions
# with few channels: resnet_small at width 4 or 5 hung or aborted ("double free or corruption") in 3 of
# 6 runs of three training steps on an AVX2 AMD EPYC, at widths 8 and 16 in none of 6. On CPUs without
# AVX-512, a model with a convolution narrower than this trains without oneDNN (process-wide: about 3x
# slower, but correct). AVX-512 CPUs keep oneDNN; the project's earlier measurements ran there.
NARROWEST_SAFE_CHANNELS = 8


def avoid_narrow_convolution_bug(model: nn.Module) -> None:
    import torch

    narrowest = min((conv.out_channels for conv in model.modules() if isinstance(conv, nn.Conv2d)),
                    default=NARROWEST_SAFE_CHANNELS)
    if narrowest < NARROWEST_SAFE_CHANNELS and torch.backends.mkldnn.enabled \
            and not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        torch.backends.mkldnn.enabled = False


def build_from_spec(spec: dict) -> BlockNet:
    """A fresh model as a stage's model spec describes it (architecture, in_channels, num_classes, width)."""
    return build_model(spec["architecture"], spec["in_channels"], spec["num_classes"], spec.get("width"))
