"""Deferred imports, so that a params validation error comes back before torch has loaded.

Importing the params module used to take 2.7 s here, nearly all of it torch (1.2 s) and torchvision
(the model registry). The schema needs neither, but it reaches the attack modules for their
settings, and those use torch only inside their functions. Within `deferred_imports("torch")` a
stand-in sits in `sys.modules`: `import torch` binds it without loading anything, and the first
attribute read through it (`torch.Tensor`) imports the real module.

importlib's LazyLoader does not serve here: on Python 3.11 the `import` statement itself reads
the module's `__spec__`, which makes LazyLoader load at once.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator


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


@contextmanager
def deferred_imports(*names: str) -> Iterator[None]:
    """Within the block, `import <name>` binds a stand-in that loads the real module on first use.

    The stand-ins leave `sys.modules` at the end of the block, so that later imports (such as
    `import torch.nn.functional`, whose parent lookup would otherwise load torch halfway through
    and run `torch/nn/__init__.py` twice) go through the normal machinery. Modules imported within
    the block keep their stand-in, which forwards to the real module once it is loaded.
    """
    placed = [name for name in names if name not in sys.modules]
    for name in placed:
        sys.modules[name] = _Deferred(name)
    try:
        yield
    finally:
        for name in placed:
            if isinstance(sys.modules.get(name), _Deferred):
                del sys.modules[name]
