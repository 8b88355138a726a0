"""Benchmark: the clean reference. Trains the victim model's configuration on the clean training set.

Prints its clean accuracy and the attack success rate of the trigger on it (the floor a defense can
reach), and writes them to benchmarks/results/clean_reference.json. Run from the repo root:

    .venv/bin/python benchmarks/clean_reference.py
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from ptdefense.artifacts import resolve_path, write_json  # noqa: E402
from ptdefense.attacks import build_attack  # noqa: E402
from ptdefense.data import dataset_num_classes, load_dataset  # noqa: E402
from ptdefense.metrics import attack_success_rate, clean_accuracy  # noqa: E402
from ptdefense.models import build_model  # noqa: E402
from ptdefense.params import load_params  # noqa: E402
from ptdefense.training import FitConfig, fit, pick_device, predict, seed_everything  # noqa: E402


def main() -> None:
    params = load_params("params.yaml")
    seed_everything(params.seed)
    device = pick_device(params.device)
    train, test = load_dataset(params.data.name, resolve_path(params.data.root), params.data.download,
                               params.data.train_limit, params.data.test_limit)
    num_classes = dataset_num_classes(params.data.name)
    settings = params.attack.model_dump()
    attack = build_attack(settings.pop("name"), num_classes, seed=params.seed, **settings)
    triggered = attack.triggered_test(test)
    torch.manual_seed(params.seed)
    model = build_model(params.model.name, train.image_shape[0], num_classes, params.model.width)
    started = time.perf_counter()
    fit(model, train, FitConfig(**params.train.model_dump()), device, params.seed, description="clean reference")
    result = {
        "clean_accuracy": clean_accuracy(predict(model, test.images, device), test.labels),
        "attack_success_rate": attack_success_rate(predict(model, triggered.data.images, device), triggered.attack_targets),
        "wall_seconds": time.perf_counter() - started,
        "attack": params.attack.name,
        "dataset": params.data.name,
        "model": params.model.name,
        "epochs": params.train.epochs,
    }
    write_json(Path("benchmarks/results/clean_reference.json"), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
