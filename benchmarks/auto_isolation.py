"""Benchmark: isolation without a known poison rate (isolation.method auto) across poison rates.

For each attack and poison rate it runs the pipeline's own functions in-process: poison the
training set, partially train (params.yaml's `partial` section and freeze_layers), isolate with the
chosen method, and score the isolated set against the true poison. Prints a markdown table and
writes benchmarks/results/auto_isolation.{json,md}. Run from the repo root:

    .venv/bin/python benchmarks/auto_isolation.py                       # badnets, blend × 1/5/10/20%
    .venv/bin/python benchmarks/auto_isolation.py --attacks sig --rates 0.05 --method quarantine

--cache DIR keeps each partial model's logits and features, so that a change to the isolation
rule can be re-measured without partial training again.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from ptdefense.artifacts import resolve_path, write_json, write_text  # noqa: E402
from ptdefense.attacks.registry import build_attack  # noqa: E402
from ptdefense.data.loading import load_dataset  # noqa: E402
from ptdefense.defenses.isolation import isolate_samples  # noqa: E402
from ptdefense.defenses.pt import build_partial_model  # noqa: E402
from ptdefense.metrics import isolation_metrics  # noqa: E402
from ptdefense.defenses.depth import resolve_freeze_layers  # noqa: E402
from ptdefense.models.catalogue import num_blocks  # noqa: E402
from ptdefense.params import load_params  # noqa: E402
from ptdefense.training import FitConfig, fit, pick_device, seed_everything  # noqa: E402


THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)  # quarantine probabilities swept on the same quarantine model


def measure(params, attack_name: str, rate: float, method: str, train, num_classes: int, device,
            cache: Path | None) -> dict:
    attack = build_attack(attack_name, num_classes, rate, params.attack.target_label, params.seed,
                          getattr(params.attack, attack_name))
    poisoned = attack.poison(train, device)
    started = time.perf_counter()

    def partial_model(freeze_layers: int):
        return build_partial_model(params.model.name, train.image_shape[0], num_classes, params.model.width,
                                   freeze_layers, params.partial.frozen_bn, poisoned.data.images, device, params.seed)

    model, freeze_layers, _ = resolve_freeze_layers(params.freeze_layers, partial_model, poisoned.data, num_classes,
                                                    num_blocks(params.model.name), device, params.seed)
    cached = cache / f"{attack_name}-{rate}-k{freeze_layers}-seed{params.seed}.pt" if cache else None
    if cached and cached.is_file():
        model.load_state_dict(torch.load(cached, weights_only=True))
    else:
        fit(model, poisoned.data, FitConfig(**params.partial.model_dump(exclude={"frozen_bn"})), device,
            params.seed + 1, description="partial")
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), cached)
    settings = params.isolation.model_copy(update={"method": method})
    result, _ = isolate_samples(model, poisoned.data, settings, num_classes, params.model.name, params.model.width,
                                freeze_layers, device, params.seed + 3)
    scores = isolation_metrics(result.isolated, poisoned.poison_indices, len(poisoned.data))
    # The same quarantine model at other probability thresholds: how sensitive the cut is.
    sweep = {}
    # The labels isolation actually drew from: those the held-out quarantine test confirmed.
    classes = result.details.get("suspicious_classes") or []
    if method != "ratio" and classes:
        in_suspicious = torch.isin(poisoned.data.labels, torch.tensor(classes))
        for threshold in THRESHOLDS:
            chosen = torch.nonzero(in_suspicious & (result.scores > threshold)).flatten()
            swept = isolation_metrics(chosen, poisoned.poison_indices, len(poisoned.data))
            sweep[str(threshold)] = {key: swept[key] for key in ("isolation_recall", "isolation_false_positive_rate")}
    return {"attack": attack_name, "poison_rate": rate, "method": method, **scores, "threshold_sweep": sweep,
            "suspicious_classes": result.details.get("suspicious_classes"),
            "low_loss_mode_size": result.details.get("low_loss_mode_size"),
            "seed_count": result.details.get("seed_count"), "wall_seconds": time.perf_counter() - started}


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| attack | poison rate | method | flagged labels | seeds | isolated | recall % | FPR % | precision % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['attack']} | {100 * row['poison_rate']:g}% | {row['method']} | {row['suspicious_classes']} "
                     f"| {row['seed_count']} | {row['isolated_count']} | {_percent(row['isolation_recall'])} "
                     f"| {_percent(row['isolation_false_positive_rate'])} | {_percent(row['isolation_precision'])} |")
    lines += ["", "Recall % / FPR % of the same quarantine model at other probability thresholds:", "",
              "| attack | poison rate | " + " | ".join(f"threshold {t}" for t in THRESHOLDS) + " |",
              "|---|---|" + "---|" * len(THRESHOLDS)]
    for row in rows:
        cells = [f"{_percent(row['threshold_sweep'][str(t)]['isolation_recall'])} / "
                 f"{_percent(row['threshold_sweep'][str(t)]['isolation_false_positive_rate'])}"
                 if str(t) in row["threshold_sweep"] else "—" for t in THRESHOLDS]
        lines.append(f"| {row['attack']} | {100 * row['poison_rate']:g}% | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blend"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.01, 0.05, 0.10, 0.20])
    parser.add_argument("--method", default="auto", choices=["auto", "quarantine", "ratio"])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--output", default="benchmarks/results/auto_isolation")
    args = parser.parse_args()

    params = load_params("params.yaml")
    seed_everything(params.seed)
    device = pick_device(params.device)
    loaded = load_dataset(params.data.name, resolve_path(params.data.root), params.data.download,
                          params.data.train_limit, params.data.test_limit, image_size=params.data.image_size,
                          test_split=params.data.test_split, seed=params.seed)
    train, num_classes = loaded.train, loaded.num_classes
    rows = []
    for attack_name in args.attacks:
        for rate in args.rates:
            rows.append(measure(params, attack_name, rate, args.method, train, num_classes, device, args.cache))
            print(table(rows[-1:]).splitlines()[2], flush=True)
    report = table(rows)
    print(report)
    write_json(Path(f"{args.output}.json"), rows)
    write_text(Path(f"{args.output}.md"), report)


if __name__ == "__main__":
    main()
