"""Benchmark: the attack zoo. Every registered attack through the real pipeline, as DVC experiments.

    .venv/bin/python benchmarks/attack_zoo.py --queue    # queue `dvc exp run -S attack.name=<a> --name zoo-<a>`
    .venv/bin/dvc queue start -j 1                        # run them (about 6 min each on 2 CPU cores)
    .venv/bin/python benchmarks/attack_zoo.py            # print the table of the finished zoo-* experiments

`--prefix P` names the experiments P<attack> instead of zoo-<attack>, to keep several zoos apart.

Each row: backdoored clean accuracy / attack success rate, PT-defended clean accuracy / attack
success rate, isolation precision / recall, and the labels isolation took samples from. The table is also
written to benchmarks/results/attack_zoo.md.
"""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ptdefense.attacks import attack_names  # noqa: E402

DVC = str(Path(sys.executable).with_name("dvc"))


def queue(prefix: str) -> None:
    for name in attack_names():
        subprocess.run([DVC, "exp", "run", "--queue", "-S", f"attack.name={name}", "--name", f"{prefix}{name}"], check=True)


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def flagged(isolation: dict) -> str:
    """The labels isolation took samples from (the suspicious ones)."""
    per_class = isolation.get("isolated_per_class") or {}
    return ", ".join(label for label, count in per_class.items() if count) or "none"


def table(prefix: str) -> str:
    shown = json.loads(subprocess.run([DVC, "exp", "show", "--json", "--all-commits"], check=True, capture_output=True, text=True).stdout)
    rows = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            if executor and executor.get("state") not in (None, "success"):
                continue  # queued or running: its metrics would be the baseline's
            for revision in experiment.get("revs", []):
                name = revision.get("name") or ""
                metrics = ((revision.get("data") or {}).get("metrics") or {})
                evaluated = metrics.get("metrics/evaluate.json", {}).get("data")
                if name.startswith(prefix) and evaluated:
                    rows[name.removeprefix(prefix)] = evaluated
    lines = ["| attack | backdoored CA / ASR | PT CA / ASR | isolation precision / recall | isolated | from labels |",
             "|---|---|---|---|---|---|"]
    for name in attack_names():
        if name not in rows:
            lines.append(f"| {name} | not run | | | | |")
            continue
        evaluated = rows[name]
        backdoored, defended, isolation = evaluated["backdoored"], evaluated["defended"], evaluated.get("isolation") or {}
        lines.append(
            f"| {name} | {_percent(backdoored['clean_accuracy'])} / {_percent(backdoored['attack_success_rate'])} "
            f"| {_percent(defended['clean_accuracy'])} / {_percent(defended['attack_success_rate'])} "
            f"| {_percent(isolation.get('isolation_precision'))} / {_percent(isolation.get('isolation_recall'))} "
            f"| {isolation.get('isolated_count')} | {flagged(isolation)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    prefix = sys.argv[sys.argv.index("--prefix") + 1] if "--prefix" in sys.argv else "zoo-"
    if "--queue" in sys.argv:
        queue(prefix)
    else:
        text = table(prefix)
        Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
        Path("benchmarks/results/attack_zoo.md").write_text(text + "\n")
        print(text)
