"""Pickles that run code when unpickled: the hostile files of the untrusted-input tests."""

from __future__ import annotations

import os
from pathlib import Path


class TouchesMarker:
    """Unpickling this runs `touch <marker>` through os.system; the marker shows whether it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalsMarker:
    """The same through eval(): a different global for an unpickler to refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))
