"""Datasets held in memory as uint8 tensors (N, C, H, W) with int64 labels.

The modules, imported where needed (this package imports nothing, so that the params schema can
read the catalogue without loading torch):

- dataset: ImageSet, an in-memory image set, and its safe .npz form.
- catalogue: the dataset names, their class counts and class names (no torch, no numpy).
- errors: DatasetError, DatasetUnavailable, DatasetInvalid (no torch, no numpy).
- loading: load_dataset and LoadedDataset, and the helpers the formats share.
- formats: one module per on-disk format (idx, cifar10, gtsrb, imagefolder, npz).
"""
