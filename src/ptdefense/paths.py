"""Where the stages read and write, relative to the workspace (DVC runs every stage from the
repository root). The truth file is kept apart, so that no defense depends on it: only
clean-reference (a bound, not a defense) and evaluate read it."""

from pathlib import Path

TRAIN_SET = Path("data/poisoned/train.npz")
TEST_CLEAN = Path("data/poisoned/test_clean.npz")
TEST_TRIGGERED = Path("data/poisoned/test_triggered.npz")
TRUTH = Path("data/truth/poison_indices.npz")
BACKDOORED_MODEL = Path("models/backdoored")
PARTIAL_MODEL = Path("models/partial")
DEFENDED_MODEL = Path("models/defended")
ABL_MODEL = Path("models/abl")
ABL_ISOLATION = Path("data/abl/isolation.npz")
CLEAN_REFERENCE_MODEL = Path("models/clean_reference")
LOSSES_CSV = Path("data/isolation/losses.csv")
ISOLATED = Path("data/isolation/isolated.npz")
SUSPECTS_REPORT = Path("reports/suspects.csv")
SUSPECTS_GRID = Path("plots/suspects.png")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")


def stage_metrics(stage: str) -> Path:
    """metrics/<stage>.json, e.g. metrics/train_backdoored.json for train-backdoored."""
    return METRICS_DIR / f"{stage.replace('-', '_')}.json"
