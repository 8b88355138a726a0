"""Benchmark: where the pipeline's time goes, against a bare PyTorch loop. Figures, not assertions.

Measures, on the default configuration (params.yaml) and the training set poison-data wrote:
- training throughput (images/s) of the pipeline's `fit` (inside a checkpointing scope, as the
  stages run it) against a bare loop: the same model, batch size, precision and optimiser on
  tensors already in memory, with no logging, checkpoints or per-epoch bookkeeping;
- partial training's throughput at every `freeze_layers` of the model, and its speed-up per
  epoch over full training;
- each stage's wall time and the whole pipeline's, as the stages measured them in their last
  `dvc repro` (the `wall_seconds` of metrics/*.json);
- how long a params validation error takes to come back from a stage script;
- with --dvc: the wall time and peak memory of a full `dvc exp run --temp --force` and of one
  with `freeze_layers` changed (what a user iterating on PT re-runs);
- with --levers: each speed lever on and off (inference batch size and precision, the frozen-feature
  cache of partial training, torch.compile with its compile time);
- peak memory (max RSS) of this process.

Prints one table and writes benchmarks/results/speed.json. Run from the repo root, after
`dvc repro` (it reads data/poisoned/train.npz), with nothing else running:

    .venv/bin/python benchmarks/speed.py [--samples 12800] [--epochs 3] [--repeats 3] [--levers] [--dvc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ptdefense.artifacts import write_json  # noqa: E402
from ptdefense.checkpoints import checkpointing  # noqa: E402
from ptdefense.data.dataset import ImageSet  # noqa: E402
from ptdefense.models.registry import build_model  # noqa: E402
from ptdefense.models.catalogue import num_blocks  # noqa: E402
from ptdefense.params import load_params  # noqa: E402
from ptdefense.data.dataset import dataset_info  # noqa: E402
import ptdefense.training as training  # noqa: E402
from ptdefense.training import (INFERENCE_BATCH_SIZE, FitConfig, fit, pick_device, predict_logits,  # noqa: E402
                                training_memory_format)

# The stages that measure their own wall time (poison-data and evaluate do not train).
STAGE_METRICS = {"train-backdoored": "train_backdoored", "partial-train": "partial_train", "isolate": "isolate",
                 "finetune": "finetune", "abl": "abl", "clean-reference": "clean_reference"}


def bare_loop(model, images: torch.Tensor, labels: torch.Tensor, config: FitConfig, device) -> float:
    """The reference: float inputs prepared once, SGD, autocast as the pipeline; nothing else."""
    memory_format = training_memory_format({config.batch_size})
    model.to(device=device, memory_format=memory_format).train()
    inputs = images.float().div_(127.5).sub_(1.0).contiguous(memory_format=memory_format)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    started = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), config.batch_size):
            index = order[start:start + config.batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss = F.cross_entropy(model(inputs[index].to(device)).float(), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return config.epochs * len(labels) / (time.perf_counter() - started)


def pipeline_fit(model, train: ImageSet, config: FitConfig, device, seed: int) -> float:
    with tempfile.TemporaryDirectory() as scratch, checkpointing("benchmark", "speed", Path(scratch)):
        started = time.perf_counter()
        fit(model, train, config, device, seed, description="benchmark")
        return config.epochs * len(train) / (time.perf_counter() - started)


def inference_images_per_second(model, images: torch.Tensor, device, batch_size: int, precision: str) -> float:
    predict_logits(model, images[:batch_size], device, batch_size, precision)  # warm-up
    started = time.perf_counter()
    predict_logits(model, images, device, batch_size, precision)
    return len(images) / (time.perf_counter() - started)


def compiled_training(model, images: torch.Tensor, labels: torch.Tensor, config: FitConfig, device) -> dict:
    """torch.compile: seconds to the end of the first two steps (compilation), then steady images/s.

    Its eager reference is `bare_loop`, which converts the inputs once up front and uses weight
    decay: not like-for-like, but both favour the eager side, so the speed-up is if anything low."""
    model.to(device=device, memory_format=torch.channels_last).train()
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True)

    def step(index):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            inputs = images[index].float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(compiled(inputs.to(device)).float(), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    batches = torch.arange(len(labels) - len(labels) % config.batch_size).split(config.batch_size)  # drop_last
    if len(batches) < 3:
        sys.exit(f"error: --samples must give at least 3 full batches of {config.batch_size} for torch.compile")
    step(batches[0])
    step(batches[1])
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for index in batches:
        step(index)
    return {"compile_seconds": compile_seconds,
            "images_per_second": len(batches) * config.batch_size / (time.perf_counter() - started)}


def measure_levers(fresh, train: ImageSet, config: FitConfig, device, seed: int, freeze_layers: int | str,
                   with_compile: bool) -> dict:
    """Each lever on and off, on the same data: the figures behind the choices in the README."""
    model = fresh()
    levers = {"inference_images_per_second": {
        f"fp32, batch {size}": inference_images_per_second(model, train.images, device, size, "fp32")
        for size in (1024, INFERENCE_BATCH_SIZE)}}
    levers["inference_images_per_second"][f"bf16, batch {INFERENCE_BATCH_SIZE}"] = inference_images_per_second(
        model, train.images, device, INFERENCE_BATCH_SIZE, "bf16")
    cached = {}
    for freeze in sorted({2, 3} | ({freeze_layers} if isinstance(freeze_layers, int) else set())):  # auto: 3 here
        cached[f"freeze_layers={freeze}, cached"] = pipeline_fit(fresh(freeze), train, config, device, seed)
        saved = training.FEATURE_CACHE_LIMIT_BYTES
        training.FEATURE_CACHE_LIMIT_BYTES = 0
        try:
            cached[f"freeze_layers={freeze}, recomputed"] = pipeline_fit(fresh(freeze), train, config, device, seed)
        finally:
            training.FEATURE_CACHE_LIMIT_BYTES = saved
    levers["partial_training_images_per_second"] = cached
    if with_compile:
        levers["torch_compile"] = {
            "eager_images_per_second": bare_loop(fresh(), train.images, train.labels, config, device),
            **compiled_training(fresh(), train.images, train.labels, config, device)}
    return levers


def validation_error_seconds() -> float:
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "params.yaml").write_text("train:\n  lr: -1\n")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(REPO / "stages/partial_train.py")], cwd=scratch,
                                capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - started
    assert result.returncode == 2 and "train.lr" in result.stderr, result.stderr
    return elapsed


_TIMED = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"seconds": time.perf_counter() - started, "returncode": result.returncode,
                  "peak_memory_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "ran": [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")],
                  "tail": (result.stdout + result.stderr)[-1500:]}))
"""


def timed_dvc(args: list[str]) -> dict:
    """Run a dvc command in a fresh wrapper process: wall time, the stages it ran, and the peak
    memory of any one process under it (the wrapper's only children are dvc and its stages)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([sys.executable, "-c", _TIMED, "dvc", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    if measured["returncode"] != 0:
        sys.exit(f"error: dvc {' '.join(args)} failed:\n{measured['tail']}")
    return measured


def stage_wall_seconds() -> dict[str, float | None]:
    walls = {}
    for stage, name in STAGE_METRICS.items():
        path = REPO / "metrics" / f"{name}.json"
        walls[stage] = json.loads(path.read_text()).get("wall_seconds") if path.is_file() else None
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=12_800, help="training images per measurement")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per measurement (default: train.epochs; the feature cache needs two or more)")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs per figure")
    parser.add_argument("--dvc", action="store_true",
                        help="also time a full `dvc exp run --temp --force` and one with freeze_layers changed "
                             "(about 20 minutes on 2 cores)")
    parser.add_argument("--levers", action="store_true",
                        help="also measure each speed lever on and off (inference batch and precision, the "
                             "frozen-feature cache, torch.compile): about 3 minutes")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/speed.json"))
    args = parser.parse_args()

    params = load_params(REPO / "params.yaml")
    device = pick_device(params.device)
    train_path = REPO / "data/poisoned/train.npz"
    if not train_path.is_file():
        sys.exit(f"error: {train_path} is missing; run `dvc repro poison-data` first")
    full = ImageSet.load(train_path)
    train = full.subset(torch.arange(min(args.samples, len(full))))
    args.epochs = args.epochs or params.train.epochs
    config = FitConfig(**{**params.train.model_dump(), "epochs": args.epochs})
    in_channels, num_classes = train.images.shape[1], dataset_info(train_path)["num_classes"]

    def fresh(freeze: int = 0):
        torch.manual_seed(params.seed)
        model = build_model(params.model.name, in_channels, num_classes, params.model.width)
        model.freeze_prefix(freeze)
        return model

    # Warm-up: first calls pay for allocator growth and kernel selection.
    bare_loop(fresh(), train.images[:512], train.labels[:512], config, device)
    rows: dict[str, float] = {}
    # Interleaved repeats, median of each: run-to-run noise on this 2-core machine is ~20%.
    bare_runs, pipeline_runs = [], []
    for _ in range(args.repeats):
        bare_runs.append(bare_loop(fresh(), train.images, train.labels, config, device))
        pipeline_runs.append(pipeline_fit(fresh(), train, config, device, params.seed))
    rows["bare_loop_images_per_second"] = statistics.median(bare_runs)
    rows["pipeline_fit_images_per_second"] = statistics.median(pipeline_runs)
    rows["pipeline_over_bare"] = rows["pipeline_fit_images_per_second"] / rows["bare_loop_images_per_second"]
    partial = {}
    for freeze in range(num_blocks(params.model.name)):
        partial[freeze] = statistics.median(pipeline_fit(fresh(freeze), train, config, device, params.seed)
                                            for _ in range(args.repeats))
    rows["validation_error_seconds"] = validation_error_seconds()
    levers = measure_levers(fresh, train, config, device, params.seed, params.freeze_layers,
                            with_compile=True) if args.levers else {}
    dvc_runs = {}
    if args.dvc:
        # In temporary copies (--temp), so the workspace and dvc.lock stay as they are. freeze_layers
        # is set to a value other than params.yaml's, else nothing would re-run.
        other = 2 if params.freeze_layers != 2 else 3
        dvc_runs["full"] = timed_dvc(["exp", "run", "--temp", "--force", "--name", f"speed-full-{int(time.time())}"])
        dvc_runs[f"freeze_layers={other}"] = timed_dvc(["exp", "run", "--temp", "-S", f"freeze_layers={other}",
                                                        "--name", f"speed-freeze{other}-{int(time.time())}"])
    result = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": params.model.name, "batch_size": config.batch_size, "precision": config.precision,
        "samples": len(train), "epochs": args.epochs, "repeats": args.repeats,
        "bare_loop_runs": bare_runs, "pipeline_fit_runs": pipeline_runs,
        **rows,
        "partial_images_per_second": {str(k): v for k, v in partial.items()},
        "partial_speedup_over_full": {str(k): v / partial[0] for k, v in partial.items()},
        "stage_wall_seconds_last_repro": stage_wall_seconds(),
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "levers": levers,
        "dvc": {name: {k: v for k, v in run.items() if k != "tail"} for name, run in dvc_runs.items()},
    }
    walls = {k: v for k, v in result["stage_wall_seconds_last_repro"].items() if v is not None}
    result["training_stages_wall_seconds_total"] = sum(walls.values())
    write_json(args.out, result)

    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {params.model.name}, "
          f"batch {config.batch_size}, {config.precision}, {len(train)} images x {args.epochs} epoch(s), "
          f"median of {args.repeats} runs")
    print("| measure | value |\n|---|---|")
    print(f"| bare PyTorch loop | {rows['bare_loop_images_per_second']:,.0f} images/s |")
    print(f"| pipeline `fit` (checkpointing on) | {rows['pipeline_fit_images_per_second']:,.0f} images/s "
          f"({rows['pipeline_over_bare']:.2f}x the bare loop) |")
    for freeze, speed in partial.items():
        print(f"| partial training, freeze_layers={freeze} | {speed:,.0f} images/s "
              f"({speed / partial[0]:.2f}x full training) |")
    for stage, wall in walls.items():
        print(f"| stage {stage} (last dvc repro) | {wall:,.1f} s |")
    print(f"| training stages, total (last dvc repro) | {result['training_stages_wall_seconds_total']:,.1f} s |")
    print(f"| params validation error from a stage script | {rows['validation_error_seconds']:.2f} s |")
    for name, run in dvc_runs.items():
        label = "`dvc exp run --temp --force` (full pipeline)" if name == "full" else f"`dvc exp run --temp -S {name}`"
        share = f" ({run['seconds'] / dvc_runs['full']['seconds']:.0%} of the full run)" if name != "full" else ""
        print(f"| {label} | {run['seconds']:,.0f} s{share}, stages run: {len(run['ran'])}, "
              f"peak memory {run['peak_memory_mib']:,.0f} MiB |")
    for group, figures in levers.items():
        for name, value in figures.items():
            unit = "s" if name.endswith("seconds") else "images/s"
            print(f"| lever: {group.replace('_', ' ')}, {name.replace('_', ' ')} | {value:,.1f} {unit} |")
    print(f"| peak memory of this benchmark process | {result['peak_memory_mib']:,.0f} MiB |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
