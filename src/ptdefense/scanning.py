"""The scanning workflow: a dataset that arrives already suspicious (`attack.name: none`).

Two pieces live here:
- `read_poison_list`: the optional list of known poisoned samples (`data.poison_indices`), read by
  poison-data into the truth file, so that evaluate can score the isolation. Each line names one
  training sample, by index or by its file path relative to `data.root`.
- `write_suspects_report`: the isolate stage's answer to "which samples are suspicious": a CSV of
  the isolated samples, most suspicious first, with their source file where the data has one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ptdefense.artifacts import write_csv
from ptdefense.params import ParamsError


def read_poison_list(path: Path, train_size: int, sources: list[str] | None,
                     test_sources: list[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """The training samples that `path` names, as sorted unique int64 indices, and the entries that
    name test samples instead (a folder's `data.test_split` draws its test set from the training
    images, so some listed files may have landed there: they are reported, not scored).

    Blank lines and `#` comments are skipped. An index is a position in the loaded training set,
    the `index` column of reports/suspects.csv: it holds for one data configuration only, so list
    files by path where the data has them. Any other line that names no sample is an error (a typo
    would otherwise silently lower the recall that evaluate reports)."""
    if not path.is_file():
        raise ParamsError(f"data.poison_indices: {path} not found; point it at a text file with one poisoned "
                          "sample per line (an index, or a file path relative to data.root), or set it to null")
    by_source = {name: index for index, name in enumerate(sources)} if sources is not None else {}
    held_out = set(test_sources or ())
    indices: list[int] = []
    in_test: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"data.poison_indices: {path} is not a readable text file ({error})") from None
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if re.fullmatch(r"-?[0-9]+", entry):
            index = int(entry)
            if not 0 <= index < train_size:
                raise ParamsError(f"{path}:{number}: index {index} is out of range: the training set has "
                                  f"{train_size} samples (0..{train_size - 1})")
        elif (posix := entry.replace("\\", "/")) in by_source:  # a list written on Windows
            index = by_source[posix]
        elif posix in held_out:
            in_test.append(entry)
            continue
        else:
            hint = ("file paths must be relative to data.root, as in reports/suspects.csv (e.g. "
                    f"{sources[0]!r}); with data.train_limit set, the file may have been left out"
                    if sources else "this dataset has no file names: use indices")
            raise ParamsError(f"{path}:{number}: {entry!r} names no training sample; {hint}")
        indices.append(index)
    return torch.unique(torch.tensor(indices, dtype=torch.int64)), in_test


SUSPECT_COLUMNS = ["rank", "index", "source", "label", "class_name", "partial_loss", "suspicion_score"]


def suspects_rows(isolated: torch.Tensor, scores: torch.Tensor, losses: torch.Tensor, labels: torch.Tensor,
                  class_names: list[str], sources: list[str] | None) -> list[dict]:
    """The isolated samples, most suspicious first (ties broken by index)."""
    order = isolated[torch.sort(-scores[isolated], stable=True).indices]
    rows = []
    for rank, index in enumerate(order.tolist(), start=1):
        label = int(labels[index])
        rows.append({"rank": rank, "index": index, "source": sources[index] if sources is not None else "",
                     "label": label, "class_name": class_names[label] if label < len(class_names) else str(label),
                     "partial_loss": f"{float(losses[index]):.6g}", "suspicion_score": f"{float(scores[index]):.6g}"})
    return rows


def write_suspects_report(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, SUSPECT_COLUMNS)


def plot_suspects(images: torch.Tensor, rows: list[dict], path: Path, shown: int = 40) -> None:
    """The `shown` most suspicious isolated images, each titled with its rank, file (or index), class
    and partial-model loss."""
    from ptdefense.plots import plot_image_grid

    top = rows[:shown]
    plot_image_grid(images[[row["index"] for row in top]],
                    [f"#{row['rank']} {row['source'].rsplit('/', 1)[-1] or 'index ' + str(row['index'])}\n"
                     f"{row['class_name']}, loss {float(row['partial_loss']):.2g}" for row in top],
                    path, f"top {len(top)} of {len(rows)} isolated samples, most suspicious first")


def plot_scanned_examples(train, known_poison: torch.Tensor | None, path: Path) -> None:
    """poison-data's example grid for a scan (attack.name none): the known poison, else the first samples."""
    from ptdefense.plots import plot_image_grid

    listed = known_poison is not None and known_poison.numel() > 0
    shown = (known_poison if listed else torch.arange(len(train)))[:12]
    plot_image_grid(train.images[shown], [f"#{int(i)} label {int(train.labels[i])}" for i in shown], path,
                    "known poisoned samples (data.poison_indices)" if listed
                    else "training samples, scanned as they are")
