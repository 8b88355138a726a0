"""The datasets by name, their class counts and class names, without importing torch or numpy (the
params schema checks `data.name` and the class counts against these before any heavy import).
loading.py dispatches each of these names to its format module."""

from __future__ import annotations

DATASET_NAMES = ("fashion_mnist", "mnist", "cifar10", "gtsrb", "imagefolder", "npz")

# None where only loading tells (the classes of an image folder or an npz file).
NUM_CLASSES: dict[str, int | None] = {
    "fashion_mnist": 10, "mnist": 10, "cifar10": 10, "gtsrb": 43, "imagefolder": None, "npz": None,
}

# Fashion-MNIST's label names (Xiao et al., 2017), for the reports.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def unknown_dataset(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASET_NAMES)}")


def dataset_num_classes(name: str) -> int | None:
    """The number of classes of a named dataset; None where only loading tells (imagefolder, npz)."""
    try:
        return NUM_CLASSES[name]
    except KeyError:
        raise unknown_dataset(name) from None
