"""The cells of the robustness matrix (benchmarks/robustness.py), and the one trigger no registered
attack makes: a fixed 4×4 pattern stamped at a random place in each image."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _cell(dataset: str, size: int | None, attack: str, rate: float | None, standard: float = 0.1) -> dict:
    """`rate` None: the attack's standard rate (10% dirty-label, half the target class clean-label)."""
    rate_name = "std" if rate is None else f"{rate * 100:g}pct"
    size_name = "full" if size is None else f"{size // 1000}k"
    return {"id": f"{dataset}-{size_name}-{attack}-{rate_name}", "dataset": dataset, "train_size": size,
            "attack": attack, "poison_rate_param": rate, "poison_rate": standard if rate is None else rate}


CELLS = (
    [_cell("fashion_mnist", None, attack, None, 0.05 if attack in ("sig", "label_consistent") else 0.1)
     for attack in ("badnets", "badnets_all2all", "blend", "label_consistent", "sig", "trojan", "wanet")]
    + [_cell("fashion_mnist", None, attack, rate) for attack in ("badnets", "blend") for rate in (0.01, 0.05, 0.2)]
    + [_cell("fashion_mnist", None, "badnets", 0.005)]
    + [_cell(dataset, None, attack, 0.1) for dataset in ("mnist", "cifar10") for attack in ("badnets", "blend", "wanet")]
    + [{**_cell(dataset, size, attack, 0.1), "id": f"small-{dataset}-{size // 1000}k-{attack}"}
       for dataset, size in (("fashion_mnist", 5000), ("fashion_mnist", 15000), ("mnist", 5000))
       for attack in ("badnets", "blend")]
    + [{"id": "unseen-fashion_mnist-12k-random-patch-5pct", "dataset": "fashion_mnist", "train_size": 12000,
        "attack": "unseen", "poison_rate": 0.05}]
    + [{**_cell(dataset, size, "none", 0.0, 0.0), "id": f"clean-{dataset}-{'full' if size is None else '5k'}"}
       for dataset, size in (("fashion_mnist", None), ("mnist", 5000), ("cifar10", None))]
)

# Isolate-stage-only cells outside the matrix (benchmarks/isolation_cells.py): the size of the held-out
# handwritten-digit case (4,000 images), poisoned and clean; and a 10k CIFAR-10 subset, a cheap first
# look at natural colour images, where the frozen prefix's content view agrees least with the labels.
EXTRA_ISOLATION_CELLS = [
    {**_cell("mnist", 4000, "badnets", 0.1), "id": "small-mnist-4k-badnets"},
    {**_cell("mnist", 4000, "none", 0.0, 0.0), "id": "clean-mnist-4k"},
    {**_cell("cifar10", 10000, "badnets", 0.1), "id": "small-cifar10-10k-badnets"},
    {**_cell("cifar10", 10000, "blend", 0.1), "id": "small-cifar10-10k-blend"},
    {**_cell("cifar10", 10000, "none", 0.0, 0.0), "id": "clean-cifar10-10k"},
]

# Full cells outside the matrix (benchmarks/robustness.py --cells; not in robustness.json, which is the
# matrix): the whole pipeline on the CIFAR-10 subset, to see PT's ASR where only easy_tail finds the poison,
# and on the 4,000 digits, the size of the held-out handwritten-digit case.
EXTRA_CELLS = [cell for cell in EXTRA_ISOLATION_CELLS
               if cell["id"] in ("small-cifar10-10k-badnets", "small-mnist-4k-badnets")]

UNSEEN_TARGET, UNSEEN_TEST_SIZE, UNSEEN_SEED = 0, 2000, 1234


def stamp_random_place(images: np.ndarray, rng: np.random.Generator, pattern: np.ndarray) -> np.ndarray:
    """A copy of uint8 (N, H, W) images with `pattern` pasted at a uniformly random place in each."""
    stamped = images.copy()
    size = pattern.shape[0]
    rows = rng.integers(0, images.shape[1] - size + 1, len(images))
    columns = rng.integers(0, images.shape[2] - size + 1, len(images))
    for image, row, column in zip(stamped, rows, columns):
        image[row:row + size, column:column + size] = pattern
    return stamped


def unseen_trigger_folder(directory: Path, cell: dict) -> tuple[Path, Path]:
    """An image folder of Fashion-MNIST's first `train_size` training images, `poison_rate` of them
    stamped with the pattern and relabelled to class 0, its test split, the list of the poisoned files,
    and the triggered test images (for the attack success rate, which evaluate cannot score)."""
    from PIL import Image

    from ptdefense.data.loading import load_dataset

    root, poison_list = directory / cell["id"], directory / f"{cell['id']}-poison.txt"
    if poison_list.is_file():
        return root, poison_list
    loaded = load_dataset("fashion_mnist", Path("/nonexistent"), download=False, train_limit=cell["train_size"],
                          test_limit=UNSEEN_TEST_SIZE)
    rng = np.random.default_rng(UNSEEN_SEED)
    pattern = np.where(rng.random((4, 4)) < 0.5, 255, 0).astype(np.uint8)
    train_images, labels = loaded.train.images[:, 0].numpy(), loaded.train.labels.numpy().copy()
    candidates = np.flatnonzero(labels != UNSEEN_TARGET)
    poisoned = np.sort(rng.choice(candidates, round(cell["poison_rate"] * len(labels)), replace=False))
    train_images[poisoned] = stamp_random_place(train_images[poisoned], rng, pattern)
    labels[poisoned] = UNSEEN_TARGET
    for split, images, split_labels in (("train", train_images, labels),
                                        ("test", loaded.test.images[:, 0].numpy(), loaded.test.labels.numpy())):
        for index, (image, label) in enumerate(zip(images, split_labels)):
            path = root / split / f"c{label}" / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(path)
    test_images, test_labels = loaded.test.images[:, 0].numpy(), loaded.test.labels.numpy()
    victims = test_labels != UNSEEN_TARGET
    np.savez(directory / f"{cell['id']}-triggered-test.npz",
             images=stamp_random_place(test_images[victims], rng, pattern)[:, None],
             attack_targets=np.full(int(victims.sum()), UNSEEN_TARGET, dtype=np.int64))
    poison_list.write_text("".join(f"train/c{UNSEEN_TARGET}/{index:05d}.png\n" for index in poisoned))
    return root, poison_list
