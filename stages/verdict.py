"""DVC stage `verdict`: PT's verdict on the training set, read off isolate's statistics.

poison_found, inconclusive or no_poison_found, with the statistic behind it (each label's modified
z-score against the other labels), its threshold and the reason. Writes reports/verdict.json (a DVC
metrics file) and reports/verdict.md, and tags the stage's and the pipeline's MLflow runs with it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def verdict(params: Params) -> None:
    from ptdefense.artifacts import read_json, write_text
    from ptdefense.defenses.verdict import verdict as judge, verdict_markdown
    from ptdefense.paths import REPORTS_DIR, stage_metrics
    from ptdefense.stage import finish, logged_params
    from ptdefense.tracking import StageRun

    isolation = read_json(stage_metrics("isolate"), "isolate")
    with StageRun("verdict", params, logged_params(params, "verdict")) as run:
        result = judge(isolation, int(isolation.get("isolated_count", 0)), params.verdict.clear_z)
        report = REPORTS_DIR / "verdict.md"
        write_text(report, verdict_markdown(result))
        run.set_tags({"ptdefense.verdict": result["verdict"]}, on_parent=True)
        finish(run, REPORTS_DIR / "verdict.json", result, {"verdict_z": result["verdict_z"]}, [report])
        print(f"verdict: {result['verdict']} ({result['verdict_reason']})", file=sys.stderr)


if __name__ == "__main__":
    run_stage(verdict)
