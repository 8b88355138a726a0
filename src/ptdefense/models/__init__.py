"""Models whose forward pass is an ordered list of named blocks, so that PT can freeze a prefix.

The names and block counts come from catalogue.py, which needs no torch; the builders (and torch,
torchvision) load on first use of `build_model` or `BlockNet`, so that params validation stays fast.
"""

from ptdefense.models.catalogue import model_names, num_blocks

__all__ = ["BlockNet", "build_model", "model_names", "num_blocks"]


def __getattr__(name: str):
    if name == "BlockNet":
        from ptdefense.models.blocknet import BlockNet
        return BlockNet
    if name == "build_model":
        from ptdefense.models.registry import build_model
        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
