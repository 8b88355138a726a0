"""Benchmark: the clean reference. Trains the victim model's configuration on the clean training set.

Prints its clean accuracy and, for every registered attack, the attack success rate of that
attack's trigger on it: the floor a defense can reach, since some triggers push a clean model to
the target by themselves. Writes benchmarks/results/clean_reference.json. Run from the repo root:

    .venv/bin/python benchmarks/clean_reference.py
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from ptdefense.artifacts import resolve_path, write_json  # noqa: E402
from ptdefense.attacks.registry import attack_names, build_attack  # noqa: E402
from ptdefense.data.loading import load_dataset  # noqa: E402
from ptdefense.metrics import attack_success_rate, clean_accuracy  # noqa: E402
from ptdefense.models.registry import build_model  # noqa: E402
from ptdefense.params import load_params  # noqa: E402
from ptdefense.training import FitConfig, fit, pick_device, predict, seed_everything  # noqa: E402


def main() -> None:
    params = load_params("params.yaml")
    seed_everything(params.seed)
    device = pick_device(params.device)
    loaded = load_dataset(params.data.name, resolve_path(params.data.root), params.data.download,
                          params.data.train_limit, params.data.test_limit, image_size=params.data.image_size,
                          test_split=params.data.test_split, seed=params.seed)
    train, test, num_classes = loaded.train, loaded.test, loaded.num_classes
    torch.manual_seed(params.seed)
    model = build_model(params.model.name, train.image_shape[0], num_classes, params.model.width)
    started = time.perf_counter()
    fit(model, train, FitConfig(**params.train.model_dump()), device, params.seed, description="clean reference")
    floors = {}
    for name in attack_names():
        attack = build_attack(name, num_classes, params.attack.poison_rate, params.attack.target_label, params.seed,
                              getattr(params.attack, name))
        triggered = attack.triggered_test(test)
        floors[name] = attack_success_rate(predict(model, triggered.data.images, device), triggered.attack_targets)
    result = {
        "clean_accuracy": clean_accuracy(predict(model, test.images, device), test.labels),
        "attack_success_rate_floor": floors,
        "wall_seconds": time.perf_counter() - started,
        "dataset": params.data.name,
        "model": params.model.name,
        "epochs": params.train.epochs,
    }
    write_json(Path("benchmarks/results/clean_reference.json"), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
