"""The speed levers of issue 7 change how fast, never what is computed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ptdefense.training as training
from ptdefense.data.dataset import ImageSet
from ptdefense.defenses.pt import build_partial_model
from ptdefense.training import FitConfig, fit, frozen_feature_cache

CPU = torch.device("cpu")
SRC = Path(__file__).resolve().parents[1] / "src"


def random_set(n: int, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (n,), dtype=torch.int64, generator=generator))


def partial_model(freeze_layers: int, data: ImageSet):
    return build_partial_model("resnet_small", 1, 10, 8, freeze_layers, "recalibrate", data.images, CPU, seed=0)


def count_prefix_passes(model) -> list[int]:
    calls = [0]
    original = model.frozen_features

    def counting(images):
        calls[0] += 1
        return original(images)

    model.frozen_features = counting  # forward() reaches it through self
    return calls


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("freeze_layers", [2, 3])
def test_cached_frozen_features_train_the_same_weights(monkeypatch, precision, freeze_layers):
    data = random_set(320)
    config = FitConfig(epochs=3, batch_size=64, lr=0.1, precision=precision)
    cached_model, plain_model = partial_model(freeze_layers, data), partial_model(freeze_layers, data)
    cached_calls, plain_calls = count_prefix_passes(cached_model), count_prefix_passes(plain_model)
    cached_history = fit(cached_model, data, config, CPU, seed=0)
    monkeypatch.setattr(training, "FEATURE_CACHE_LIMIT_BYTES", 0)  # over the limit: recompute every batch
    plain_history = fit(plain_model, data, config, CPU, seed=0)
    steps = config.epochs * 5
    # The prefix ran once per inference chunk (plus a probe) instead of once per training step.
    assert cached_calls[0] == 1 + 2 and plain_calls[0] == 1 + steps
    assert [h["train_loss"] for h in cached_history] == [h["train_loss"] for h in plain_history]
    cached_state, plain_state = cached_model.state_dict(), plain_model.state_dict()
    for key, tensor in plain_state.items():
        assert torch.equal(cached_state[key], tensor), key


@pytest.mark.parametrize("freeze_layers, images, expected", [
    (0, 64, None),  # nothing frozen
    (1, 64, None),  # only the stem: cheaper to recompute than to gather (measured)
    (3, 0, None),   # no images
    (3, 64, (64, 16, 14, 14)),  # resnet_small width 8: layer2 has 16 channels at half resolution
])
def test_frozen_feature_cache_when_it_pays(freeze_layers, images, expected):
    data = random_set(max(images, 8))
    model = partial_model(freeze_layers, data)
    cache = frozen_feature_cache(model, data.images[:images], "fp32", CPU, torch.channels_last)
    assert (cache is None) if expected is None else (tuple(cache.shape) == expected)
    if cache is not None:
        with torch.no_grad():
            direct = model.frozen_features(training.to_input(data.images[:images], CPU))
        assert torch.equal(cache, direct)


def test_one_epoch_fit_builds_no_cache():
    data = random_set(128)
    model = partial_model(3, data)
    calls = count_prefix_passes(model)
    fit(model, data, FitConfig(epochs=1, batch_size=64, lr=0.1, precision="fp32"), CPU, seed=0)
    assert calls[0] == 2  # one per step: a cache would cost more than it saves


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})


def test_params_validation_does_not_load_torch(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("freeze_layers: 9\n")
    result = run_python(
        "import sys\n"
        "from ptdefense.params import ParamsError, load_params\n"
        f"try:\n    load_params({str(bad)!r})\nexcept ParamsError as error:\n    print(error)\n"
        "print('torch loaded' if 'torch._C' in sys.modules else 'torch not loaded')\n"
        "print('torchvision loaded' if 'torchvision' in sys.modules else 'torchvision not loaded')\n")
    assert result.returncode == 0, result.stderr
    assert "freeze_layers=9 is too large" in result.stdout
    assert "torch not loaded" in result.stdout and "torchvision not loaded" in result.stdout


@pytest.mark.parametrize("stage", ["partial_train", "isolate", "poison_data"])
def test_a_stage_reports_bad_params_before_importing_torch(tmp_path, stage):
    (tmp_path / "params.yaml").write_text("freeze_layers: 9\n")
    script = Path(__file__).resolve().parents[1] / "stages" / f"{stage}.py"
    result = subprocess.run([sys.executable, "-X", "importtime", str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "freeze_layers=9 is too large" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "ptdefense.params" in imported  # -X importtime did list the imports
    assert not {"torch._C", "torchvision", "mlflow"} & imported


def test_the_params_layer_is_torch_free_by_construction():
    """No stand-in module: validating params imports neither torch nor numpy at all, and the attack
    settings, model and dataset catalogues it reads are real modules."""
    result = run_python(
        "import sys\n"
        "from ptdefense.params import load_params, validate_params\n"
        "validate_params({'attack': {'name': 'wanet', 'wanet': {'k': 8}}, 'model': {'name': 'vgg_small'}})\n"
        "print(sorted(name for name in ('torch', 'torchvision', 'numpy', 'mlflow') if name in sys.modules))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_attack_settings_table_matches_the_registered_attacks():
    from ptdefense.attacks.base import _REGISTRY
    from ptdefense.attacks.registry import attack_class
    from ptdefense.attacks.settings import ATTACK_SETTINGS

    assert set(_REGISTRY) == set(ATTACK_SETTINGS)
    for name, settings in ATTACK_SETTINGS.items():
        assert attack_class(name).Settings is settings


def test_final_evaluation_reuses_the_last_epochs(monkeypatch):
    from ptdefense import scoring

    clean, triggered = random_set(40, seed=1), random_set(30, seed=2)
    tests = scoring.TestSets(clean, triggered, torch.zeros(30, dtype=torch.int64))
    predictions = [0]
    real_predict = scoring.predict

    def counting_predict(*args, **kwargs):
        predictions[0] += 1
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(scoring, "predict", counting_predict)
    model = partial_model(0, clean)
    evaluate = scoring.test_set_scorer(model, CPU, tests)
    first = evaluate()
    assert set(first) == {"clean_accuracy", "attack_success_rate"}
    assert predictions[0] == 2 and evaluate() == first and predictions[0] == 2  # weights unchanged: reused
    fit(model, random_set(64), FitConfig(epochs=1, batch_size=32, lr=0.5, precision="fp32"), CPU, seed=0)
    evaluate()
    assert predictions[0] == 4  # trained since: evaluated afresh


@pytest.mark.parametrize("name", ["resnet_small", "vgg_small"])
def test_one_pass_logits_and_features_match_two_passes(name):
    from ptdefense.defenses.isolation import logits_and_features
    from ptdefense.models.registry import build_model
    from ptdefense.training import predict_logits

    data = random_set(300)
    torch.manual_seed(0)
    model = build_model(name, 1, 10, 8)
    logits, features = logits_and_features(model, data.images, CPU, batch_size=128)
    assert torch.equal(logits, predict_logits(model, data.images, CPU, batch_size=128))
    body = torch.nn.Sequential(*list(model.blocks.values())[:-1])
    with torch.no_grad():
        expected = body(training.to_input(data.images, CPU)).mean((2, 3))
    assert features.shape == (300, expected.shape[1])
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize("share,rounds", [(0.0, 2), (0.2, 2), (0.0, 3)])
def test_quarantine_scores_match_scoring_every_sample(monkeypatch, share, rounds):
    """Scoring only the candidate labels in each round, and the rest once, gives the isolated set
    and scores that scoring every sample with each round's model (the slow path) gives; with the
    seeds repeated (share 0.2: round 1's 15 seeds used 6 times), the slow path's scores corrected
    by each model's repeat count. Each later round is seeded by the one before, with fold seeds
    seed + 2·round − 1 and seed + 2·round, its folds split over the confirmed label only."""
    import ptdefense.defenses.quarantine as quarantine
    import ptdefense.defenses.seeding as seeding
    from ptdefense.defenses.isolation import logits_and_features
    from ptdefense.models.registry import build_model
    from ptdefense.training import predict_logits

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 120, (480, 1, 12, 12), dtype=torch.uint8, generator=generator)
    labels = torch.arange(480) % 4
    poison = torch.arange(0, 480, 8)  # labels 1, 5 -> relabelled to class 0 with a white corner
    images[poison, :, -3:, -3:] = 255
    labels[poison] = 0
    train = ImageSet(images, labels)
    torch.manual_seed(0)
    scorer = build_model("resnet_small", 1, 4, 4)
    fit(scorer, train, FitConfig(epochs=2, batch_size=32, lr=0.1, precision="fp32"), CPU, seed=0)
    logits, _ = logits_and_features(scorer, train.images, CPU)
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    config = FitConfig(epochs=2, batch_size=32, lr=0.1, precision="fp32")
    round_models = []
    original = quarantine.train_quarantine
    monkeypatch.setattr(quarantine, "train_quarantine",
                        lambda *a, **k: round_models.append(original(*a, **k)) or round_models[-1])
    threshold = 0.1
    # The candidate rule and the test's level are tested elsewhere: label 0 is the candidate, and the
    # test confirms it at any p-value (alpha 1) once most held-out seeds are quarantined.
    isolated, scores, details = quarantine.confirm_and_isolate(
        train, {0: ["diversity_gap"]}, losses, torch.zeros(480, dtype=torch.bool), 4, "resnet_small", 4, config, CPU,
        0, 0.99, threshold, rounds=rounds, alpha=1.0, seed_count=30, share=share)
    assert details["confirmed_classes"] == [0], details["confirmation"]
    assert len(round_models) == 1 + 2 * (rounds - 1)  # round 1, then two cross-fitted models per later round
    in_suspicious = labels == 0
    assert (round_models[0][2] > 1) == (share > 0)  # round 1's 15 seeds repeated, or not
    # The slow path: every sample scored by each model.
    slow_scores = [quarantine.prior_corrected(predict_logits(model, train.images, CPU).double().softmax(1)[:, 4],
                                               copies)
                   for model, _, copies in round_models]
    expected_isolated = torch.nonzero(in_suspicious & (slow_scores[0] > threshold)).flatten()
    seed_counts, copies = [15], [round_models[0][2]]  # round 1: half the 30 seeds
    for round_index in range(1, rounds):
        # Model 2r − 1 trained on the first half of label 0 (split with seed 0 + 2r − 1) and scores the
        # second, model 2r the reverse; both trained on every sample of the other labels.
        seed_counts.append(expected_isolated.numel())
        copies.append([round_models[2 * round_index - 1][2], round_models[2 * round_index][2]])
        first = torch.zeros(480, dtype=torch.bool)
        first[seeding.split_halves(torch.nonzero(in_suspicious).flatten(), 2 * round_index - 1)[0]] = True
        later = torch.where(first, slow_scores[2 * round_index], slow_scores[2 * round_index - 1])
        expected_isolated = torch.nonzero(in_suspicious & (later > threshold)).flatten()
    assert details["seed_count"] == seed_counts  # each later round seeded by the round before
    assert details["seed_copies"] == copies  # in step
    assert torch.equal(isolated, expected_isolated)
    assert torch.equal(scores[in_suspicious], later[in_suspicious])
    assert 0 < isolated.numel() <= int(in_suspicious.sum())
    assert torch.equal(scores[~in_suspicious], slow_scores[0][~in_suspicious])  # the other labels: round 1's model
