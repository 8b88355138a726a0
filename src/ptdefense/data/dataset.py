"""An in-memory image set, and its safe on-disk form (.npz, loaded without pickle)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptdefense.artifacts import ArtifactError, require_file, write_npz


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices])

    def split(self, indices: torch.Tensor) -> tuple["ImageSet", "ImageSet"]:
        """(the samples not in `indices`, in order; the samples at `indices`)."""
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[indices] = False
        return self.subset(torch.nonzero(keep).flatten()), self.subset(indices)

    def save(self, path: str | Path, **extra: np.ndarray) -> None:
        write_npz(path, images=self.images.numpy(), labels=self.labels.numpy(), **extra)

    @classmethod
    def load(cls, path: str | Path, producer: str = "poison-data") -> "ImageSet":
        arrays = load_npz(path, producer, required=("images", "labels"))
        try:
            return cls(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]))
        except ValueError as error:
            raise ArtifactError(f"{path}: {error}; re-create it with `dvc repro {producer}`") from None


def load_npz(path: str | Path, producer: str, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load arrays from an .npz without ever unpickling objects."""
    path = require_file(path, producer)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ArtifactError(f"{path} is not a readable .npz ({error}); re-create it with `dvc repro {producer}`") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ArtifactError(f"{path} lacks the arrays {missing}; re-create it with `dvc repro {producer}`")
    return arrays


def dataset_info(path: str | Path) -> dict:
    """What poison-data stored beside the training images: the class count and names, and each
    sample's source file (image folders, GTSRB), without loading the images themselves."""
    with np.load(require_file(path, "poison-data"), allow_pickle=False) as archive:
        if "num_classes" not in archive.files:
            raise ArtifactError(f"{path} predates the dataset metadata (num_classes); re-create it with "
                                "`dvc repro poison-data`")
        num_classes = int(archive["num_classes"])
        class_names = [str(name) for name in archive["class_names"]] if "class_names" in archive.files else []
        sources = [str(name) for name in archive["sources"]] if "sources" in archive.files else None
    return {"num_classes": num_classes, "class_names": class_names or [str(c) for c in range(num_classes)],
            "sources": sources}
