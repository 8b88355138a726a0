"""Benchmark: the attack zoo. Every registered attack through the real pipeline, as DVC experiments.

    .venv/bin/python benchmarks/attack_zoo.py --queue    # queue `dvc exp run -S attack.name=<a> --name zoo-<a>`
    .venv/bin/dvc queue start -j 1                        # run them (about 6 min each on 2 CPU cores)
    .venv/bin/python benchmarks/attack_zoo.py            # print the table of the finished zoo-* experiments

`--prefix P` names the experiments P<attack> instead of zoo-<attack>, to keep several zoos apart;
`--attacks a b` queues or shows only those attacks.

Each row: clean accuracy / attack success rate of every method in the pipeline (no defense, ABL, PT,
clean reference), PT's isolation precision / recall, and the labels PT isolated from. The table is
also written to benchmarks/results/attack_zoo.md.
"""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ptdefense.attacks.registry import attack_names  # noqa: E402

DVC = str(Path(sys.executable).with_name("dvc"))


def queue(prefix: str, attacks: list[str]) -> None:
    for name in attacks:
        subprocess.run([DVC, "exp", "run", "--queue", "-S", f"attack.name={name}", "--name", f"{prefix}{name}"], check=True)


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def flagged(isolation: dict) -> str:
    """The labels isolation took samples from (the suspicious ones)."""
    per_class = isolation.get("isolated_per_class") or {}
    return ", ".join(label for label, count in per_class.items() if count) or "none"


def _methods(evaluated: dict) -> dict:
    """Rows per method; experiments from before the comparison stages had only two models."""
    if "pt" in evaluated:
        return evaluated
    return {"no_defense": evaluated["backdoored"], "pt": {**evaluated["defended"], **evaluated.get("isolation", {})}}


def _pair(row: dict | None) -> str:
    return "—" if row is None else f"{_percent(row['clean_accuracy'])} / {_percent(row['attack_success_rate'])}"


def table(prefix: str, attacks: list[str]) -> str:
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
    lines = ["| attack | no defense CA / ASR | ABL CA / ASR | PT CA / ASR | clean reference CA / ASR "
             "| PT isolation precision / recall | PT isolated | from labels |",
             "|---|---|---|---|---|---|---|---|"]
    for name in attacks:
        if name not in rows:
            lines.append(f"| {name} | not run | | | | | | |")
            continue
        methods = _methods(rows[name])
        pt = methods["pt"]
        lines.append(
            f"| {name} | {_pair(methods['no_defense'])} | {_pair(methods.get('abl'))} | {_pair(pt)} "
            f"| {_pair(methods.get('clean_reference'))} "
            f"| {_percent(pt.get('isolation_precision'))} / {_percent(pt.get('isolation_recall'))} "
            f"| {pt.get('isolated_count')} | {flagged(pt)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", action="store_true", help="queue the experiments instead of showing them")
    parser.add_argument("--prefix", default="zoo-")
    parser.add_argument("--attacks", nargs="+", default=attack_names(), choices=attack_names())
    args = parser.parse_args()
    if args.queue:
        queue(args.prefix, args.attacks)
    else:
        text = table(args.prefix, args.attacks)
        Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
        Path("benchmarks/results/attack_zoo.md").write_text(text + "\n")
        print(text)
