"""Deferred imports, so that a params validation error comes back before torch has loaded.

Importing the params module used to take 2.7 s here, nearly all of it torch (1.2 s) and torchvision
(the model registry). The schema needs neither, but it reaches the attack modules for their
settings, and those use torch only inside their functions. `defer_import("torch")` puts a
stand-in into `sys.modules`: a later `import torch` binds the stand-in without loading anything,
and the first attribute read through it (`torch.Tensor`, `from torch import nn`) imports the real
module, which then replaces the stand-in.

importlib's LazyLoader does not serve here: on Python 3.11 the `import` statement itself reads
the module's `__spec__`, which makes LazyLoader load at once.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


class _Deferred(ModuleType):
    """Stands in for a module until one of its attributes is read."""

    def __getattr__(self, attribute: str):  # called only for attributes the stand-in lacks
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        module = importlib.import_module(name)
        # Copy its namespace, so that code which bound the stand-in reads it without this detour.
        self.__dict__.update({key: value for key, value in vars(module).items() if key != "__class__"})
        return getattr(module, attribute)


def defer_import(name: str) -> ModuleType:
    """`name`, imported on first use; the real module at once if it is already loaded."""
    if name not in sys.modules:
        sys.modules[name] = _Deferred(name)
    return sys.modules[name]
