"""Models whose forward pass is an ordered list of named blocks, so that PT can freeze a prefix."""

from ptdefense.models.blocknet import BlockNet
from ptdefense.models.registry import build_model, model_names, num_blocks

__all__ = ["BlockNet", "build_model", "model_names", "num_blocks"]
