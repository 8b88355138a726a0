"""DVC stage `abl`: validate params.yaml, then run ptdefense.pipeline.abl."""

import sys
from pathlib import Path

# Run the library next to this script (the code DVC hashed), also inside `dvc exp run --temp` copies.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ptdefense.pipeline import abl, run_stage  # noqa: E402

if __name__ == "__main__":
    run_stage(abl)
