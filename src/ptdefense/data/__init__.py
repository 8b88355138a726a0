"""Datasets held in memory as uint8 tensors (N, C, H, W) with int64 labels."""

from ptdefense.data.dataset import ImageSet
from ptdefense.data.loaders import (
    DATASET_NAMES,
    DatasetError,
    DatasetInvalid,
    DatasetUnavailable,
    LoadedDataset,
    dataset_num_classes,
    load_dataset,
)

__all__ = [
    "ImageSet",
    "DATASET_NAMES",
    "DatasetError",
    "DatasetInvalid",
    "DatasetUnavailable",
    "LoadedDataset",
    "dataset_num_classes",
    "load_dataset",
]
