"""Models whose forward pass is an ordered list of named blocks, so that PT can freeze a prefix.

The names and block counts come from catalogue.py, which needs no torch; the builders (and torch,
torchvision) load on first use of `build_model` or `BlockNet`, so that params validation stays fast.
"""

from typing import TYPE_CHECKING

from ptdefense.models.catalogue import model_names, num_blocks

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from ptdefense.models.blocknet import BlockNet
    from ptdefense.models.registry import build_model

__all__ = ["BlockNet", "build_model", "model_names", "num_blocks"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    if name == "BlockNet":
        from ptdefense.models.blocknet import BlockNet
        return BlockNet
    if name == "build_model":
        from ptdefense.models.registry import build_model
        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
