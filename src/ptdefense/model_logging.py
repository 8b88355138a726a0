"""What the stages hand to MLflow beyond metrics: models in the pytorch flavour, dataset inputs, and
the defended model's registry entry.

- A logged model takes what the DVC datasets hold, uint8 pixels (N, C, H, W), and returns logits;
  `mlflow.pytorch.load_model(uri)(images).argmax(1)` are its predictions. It carries a signature
  and an input example; MLflow 3 saves it with torch.export, so loading it needs no ptdefense code.
- A dataset input's digest is DVC's md5 of the file (the one in dvc.lock), and its source the
  file's path in the repository, so a run points at the exact DVC output it read.
- The defended model is registered as `<mlflow.registered_model>-<data.name>-<model.name>`.
  `evaluate` tags the version with PT's and no defense's comparison metrics, and moves the alias
  `best-der` to it when no other version has a higher DER (the defense effectiveness rating).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ptdefense.artifacts import repo_root

BEST_ALIAS = "best-der"
DER_TAG = "pt.defense_effectiveness_rating"


class PixelInputModel(nn.Module):
    """The trained network behind the scaling the stages apply: uint8 pixels → float in [-1, 1]."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.float().div(127.5).sub(1.0))


def file_md5(path: Path) -> str:
    """DVC's own hash of the file: the md5 that dvc.lock records for it."""
    from dvc_data.hashfile.hash import file_md5 as dvc_file_md5

    return dvc_file_md5(str(path))


def repo_relative(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.relative_to(repo_root())) if path.is_relative_to(repo_root()) else str(path)


def log_dataset(path: Path, images: torch.Tensor, labels: torch.Tensor, context: str) -> None:
    """`path`'s arrays as an MLflow dataset input of the active run (name: the file's stem)."""
    import warnings

    import mlflow

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both readings are the local file
        warnings.filterwarnings("ignore", message="The specified dataset source", category=UserWarning)
        dataset = mlflow.data.from_numpy(images.numpy(), source=repo_relative(path), targets=labels.numpy(),
                                         name=Path(path).stem, digest=file_md5(Path(path)))
    mlflow.log_input(dataset, context=context)


def log_model(network: nn.Module, examples: torch.Tensor, registered_name: str | None = None):
    """The network as an MLflow pytorch model of the active run; returns its ModelInfo."""
    import copy

    import mlflow.pytorch
    import torchvision
    from mlflow.models import infer_signature

    served = PixelInputModel(copy.deepcopy(network).cpu().to(memory_format=torch.contiguous_format)).eval()
    with torch.no_grad():
        outputs = served(examples).numpy()
    # Given, not inferred: inference would load the model in a subprocess to watch its imports.
    requirements = [f"torch=={torch.__version__.split('+')[0]}",
                    f"torchvision=={torchvision.__version__.split('+')[0]}"]
    return mlflow.pytorch.log_model(served, name="model", signature=infer_signature(examples.numpy(), outputs),
                                    input_example=examples.numpy(),
                                    pip_requirements=requirements, registered_model_name=registered_name)


def _der(version) -> float | None:
    value = version.tags.get(DER_TAG)
    return None if value in (None, "", "None") else float(value)


def tag_registered_version(client, name: str, training_run_id: str, metrics: dict, pipeline: str) -> dict | None:
    """Tag the version that `training_run_id` registered with PT's and the baseline's comparison
    metrics; give it the best-DER alias if no other version has a higher DER (ties: the newest).
    Returns {version, alias_moved}, or None when that run registered no version."""
    versions = client.search_model_versions(f"name = '{name}'")
    mine = [entry for entry in versions if entry.run_id == training_run_id]
    if not mine:
        return None
    version = max(mine, key=lambda entry: int(entry.version))
    tags = {key: str(value) for key, value in metrics.items()
            if key.startswith(("pt.", "no_defense.")) and isinstance(value, (int, float))}
    tags["ptdefense.pipeline"] = pipeline
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    der = None if DER_TAG not in tags else float(tags[DER_TAG])
    others = [rating for entry in versions if entry.version != version.version
              and (rating := _der(entry)) is not None]
    moved = der is not None and all(der >= rating for rating in others)
    if moved:
        client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return {"version": int(version.version), "alias_moved": moved}
