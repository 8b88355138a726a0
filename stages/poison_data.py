"""DVC stage `poison-data`: load the dataset, poison its training set with the chosen attack (or,
with attack.name none, scan it as it is, with an optional list of known poison), and write the
poisoned training set, the clean and triggered test sets, and the truth file that only the
clean reference and evaluate read."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params, ParamsError  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def poison_data(params: Params) -> None:
    import numpy as np

    from ptdefense.artifacts import resolve_path, write_npz
    from ptdefense.attacks.base import PoisonedTrainSet
    from ptdefense.attacks.registry import build_attack
    from ptdefense.data.loading import load_dataset
    from ptdefense.paths import METRICS_DIR, PLOTS_DIR, TEST_CLEAN, TEST_TRIGGERED, TRAIN_SET, TRUTH
    from ptdefense.plots import plot_poison_examples
    from ptdefense.scanning import plot_scanned_examples, read_poison_list
    from ptdefense.stage import finish, logged_params, setup
    from ptdefense.tracking import StageRun

    device = setup(params)
    data, scan = params.data, params.attack.name == "none"
    with StageRun("poison-data", params, logged_params(params, "data", "attack")) as run:
        loaded = load_dataset(data.name, resolve_path(data.root), data.download, data.train_limit, data.test_limit,
                              image_size=data.image_size, test_split=data.test_split, seed=params.seed)
        train, test = loaded.train, loaded.test
        try:
            attack = build_attack(params.attack.name, loaded.num_classes, params.attack.poison_rate,
                                  params.attack.target_label, params.seed, params.attack.settings())
        except ValueError as error:  # a target label the dataset does not have
            raise ParamsError(f"attack.target_label: {error} ({data.name} at {data.root} has "
                              f"{loaded.num_classes} classes)") from None
        known_poison, listed_in_test = None, []
        if data.poison_indices is not None:
            known_poison, listed_in_test = read_poison_list(resolve_path(data.poison_indices), len(train),
                                                            loaded.train_sources, loaded.test_sources)
            if listed_in_test:
                print(f"warning: {len(listed_in_test)} files of data.poison_indices are in the test split (e.g. "
                      f"{listed_in_test[0]}), not in the training set: they are not scored", file=sys.stderr)
        try:
            poisoned = attack.poison(train, device)
        except ValueError as error:  # e.g. more victims asked for than the data has
            raise ParamsError(f"attack {attack.name!r} cannot poison this data: {error}") from None
        if known_poison is not None:
            poisoned = PoisonedTrainSet(poisoned.data, known_poison)
        triggered = attack.triggered_test(test)
        known = not scan or known_poison is not None  # a scan may know no poison at all
        metadata = {"num_classes": np.int64(loaded.num_classes), "class_names": np.array(loaded.class_names, dtype=str)}
        if loaded.train_sources is not None:
            metadata["sources"] = np.array(loaded.train_sources, dtype=str)
        poisoned.data.save(TRAIN_SET, **metadata)
        test.save(TEST_CLEAN)
        triggered.data.save(TEST_TRIGGERED, attack_targets=triggered.attack_targets.numpy())
        write_npz(TRUTH, poison_indices=poisoned.poison_indices.numpy(), cross_indices=poisoned.cross_indices.numpy(),
                  known=np.bool_(known))
        summary = {"train_size": len(poisoned.data), "test_size": len(test), "triggered_test_size": len(triggered.data),
                   "poison_count": int(poisoned.poison_indices.numel()),
                   "poison_share": poisoned.poison_indices.numel() / len(poisoned.data),
                   "cross_count": int(poisoned.cross_indices.numel()), "clean_label": int(attack.clean_label),
                   "num_classes": loaded.num_classes, "image_shape": list(poisoned.data.image_shape),
                   "known_poison": known, "known_poison_in_test": len(listed_in_test)}
        examples = PLOTS_DIR / "poison_examples.png"
        if scan:  # nothing was changed: show the known poison, else the first samples
            plot_scanned_examples(train, known_poison, examples)
        else:
            plot_poison_examples(train, poisoned, examples, attack.name)
        logged = {key: value for key, value in summary.items() if key not in ("image_shape", "known_poison")}
        finish(run, METRICS_DIR / "poison.json", summary, logged, [examples])
        if scan:
            listed = f"{summary['poison_count']} known poisoned (data.poison_indices)" if known_poison is not None \
                else "none known poisoned"
            print(f"scanning {summary['train_size']} training samples as they are, {listed}", file=sys.stderr)
        else:
            print(f"poisoned {summary['poison_count']} of {summary['train_size']} training samples "
                  f"({attack.name}, target {params.attack.target_label})", file=sys.stderr)


if __name__ == "__main__":
    run_stage(poison_data)
