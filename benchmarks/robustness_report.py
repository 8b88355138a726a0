"""docs/robustness.md, rendered from benchmarks/results/robustness.json: every cell, and whether PT
meets each of the robustness issue's criteria there."""

from __future__ import annotations


TABLE_HEAD = ("| cell | no defense | PT | ABL | clean reference | PT isolation | PT verdict | holds | ≥ ABL | "
              "isolation ok | PT stages s | cell s | commit | overrides |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def criteria(cell: dict) -> dict[str, bool | None]:
    """PT holds (ASR ≤ max(2%, clean reference + 1 point), CA ≥ clean reference − 1.5 points), beats or
    ties ABL on both, isolates with recall ≥ 95% at FPR ≤ 1% (rates ≥ 1%); clean cells: isolates ≤ 1%,
    loses ≤ 0.5 points, verdict not poison_found. None: not applicable."""
    pt, abl, reference, none = cell["pt"], cell["abl"], cell["clean_reference"], cell["no_defense"]
    if cell["poison_rate"] == 0:
        train_size = cell.get("train_size") or 0
        isolated_share = (pt["isolated_count"] or 0) / train_size if train_size else None
        return {"clean_cell": (isolated_share is None or isolated_share <= 0.01)
                and pt["clean_accuracy"] >= none["clean_accuracy"] - 0.005 and pt["verdict"] != "poison_found"}
    asr, reference_asr = pt["attack_success_rate"], reference["attack_success_rate"]
    holds = None if asr is None or reference_asr is None else (
        asr <= max(0.02, reference_asr + 0.01) and pt["clean_accuracy"] >= reference["clean_accuracy"] - 0.015)
    beats = None if asr is None or abl["attack_success_rate"] is None else (
        pt["clean_accuracy"] >= abl["clean_accuracy"] and asr <= abl["attack_success_rate"])
    isolation = None if cell["poison_rate"] < 0.01 or pt["isolation_recall"] is None else (
        pt["isolation_recall"] >= 0.95 and pt["isolation_false_positive_rate"] <= 0.01)
    return {"holds": holds, "beats_abl": beats, "isolation": isolation}


def _mark(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def render(cells: list[dict], order: list[str]) -> str:
    by_id = {cell["id"]: cell for cell in cells}
    lines = ["# Robustness matrix", "",
             "Rendered by `benchmarks/robustness.py` from `benchmarks/results/robustness.json`; do not edit by hand.",
             "Each cell: the committed params.yaml with only the data and attack changed (overrides, if any, in "
             "the last column). CA / ASR in %, isolation precision / recall / FPR in %.", "",
             *TABLE_HEAD]
    for cell_id in order:
        lines.append(_row(by_id[cell_id]) if cell_id in by_id else f"| {cell_id} | not measured yet |{' |' * 12}")
    timed = [cell["repro_seconds"] for cell in cells if cell.get("repro_seconds")]
    lines += ["", f"{len(cells)} of {len(order)} cells measured; the {len(timed)} run here took "
              f"{sum(timed) / 3600:.1f} h of `dvc repro` in all (cell s: each cell's, all its stages; PT stages s: "
              "partial-train, isolate and finetune; commit: the code the cell ran). A cell recorded with `--adopt` "
              "has no cell time; its commit is the one its workspace was copied from.", "", tally([by_id[cell_id] for cell_id in order if cell_id in by_id])]
    return "\n".join(lines) + "\n"


def tally(cells: list[dict]) -> str:
    """How many measured cells meet each of the issue's criteria (only the cells where it applies)."""
    met = [criteria(cell) for cell in cells]

    def count(key: str) -> str:
        judged = [m[key] for m in met if m.get(key) is not None]
        return f"{sum(judged)} of {len(judged)}"

    return (f"Of the measured cells: PT holds in {count('holds')} poisoned cells; beats or ties ABL in "
            f"{count('beats_abl')}; isolation ok in {count('isolation')} at rates of 1% and above; clean cells "
            f"pass in {count('clean_cell')}.")


def _row(cell: dict) -> str:
    pair = {m: f"{_pct(cell[m]['clean_accuracy'])} / {_pct(cell[m]['attack_success_rate'])}"
            for m in ("no_defense", "pt", "abl", "clean_reference")}
    pt = cell["pt"]
    isolation = (f"{_pct(pt['isolation_precision'])} / {_pct(pt['isolation_recall'])} / "
                 f"{_pct(pt['isolation_false_positive_rate'])} ({pt['isolated_count']})")
    met = criteria(cell)
    key = cell.get("key", {})
    overrides = key.get("overrides") or ""
    return (f"| {cell['id']} | {pair['no_defense']} | {pair['pt']} | {pair['abl']} | {pair['clean_reference']} "
            f"| {isolation} | {pt['verdict']} | {_mark(met.get('holds', met.get('clean_cell')))} "
            f"| {_mark(met.get('beats_abl'))} | {_mark(met.get('isolation'))} | {_seconds(pt.get('wall_seconds'))} "
            f"| {_seconds(cell.get('repro_seconds'))} | {(cell['ran_at'] or '?') if 'ran_at' in cell else key.get('commit', '—')} | {overrides} |")


def render_extra(cells: list[dict]) -> str:
    """Full cells outside the matrix (robustness_cells.EXTRA_CELLS), in the matrix's columns."""
    if not cells:
        return ""
    lines = ["", "## Full cells outside the matrix", "",
             "The same run as a matrix cell, on data the matrix does not hold; kept out of "
             "`benchmarks/results/robustness.json`, with results in `benchmarks/results/robustness/`.", "",
             *TABLE_HEAD]
    return "\n".join(lines + [_row(cell) for cell in cells]) + "\n"


def _seconds(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def _untested(test: dict) -> str:
    """A candidate the quarantine test never ran on: too few seeds, or its turn never came (seeded from
    its low-loss mode, or by easy_tail alone with fixed-count seeds, while another label was confirmed)."""
    reason = test.get("reason", "")
    if "seeds" in test:
        return f"untested ({test['seeds']} seeds)"
    if not reason.startswith("not tested"):
        return f"cleared ({reason or 'no test recorded'})"
    why = "easy_tail alone" if "easy_tail alone" in reason else "low-loss-mode seeds"
    return f"not tested ({why}; another label confirmed)"


def _against_null(test: dict) -> str:
    """' (null z 2.4 over 8 labels)' for a candidate judged against the labels no statistic nominated."""
    if "null_labels" not in test:
        return ""
    z = test.get("null_z")
    return f" (null: {len(test['null_labels'])} labels, too few)" if z is None else \
        f" (null z {z:.1f} over {len(test['null_labels'])} labels)"


def _passes(test: dict) -> str:
    """' (pass 3; earlier: 7/49 vs 2/117, ...)' for a label tested more than once, else ''."""
    earlier = test.get("earlier_passes") or []
    if not earlier:
        return ""
    figures = ", ".join(f"{e['held_out_seeds_quarantined']}/{e['held_out_seeds']} vs "
                        f"{e['controls_quarantined']}/{e['controls']}" for e in earlier)
    return f" (pass {len(earlier) + 1}, {test.get('competing_left_out', 0)} left out; earlier: {figures})"


def render_isolation(rows: dict[str, dict], order: list[str]) -> str:
    """The isolate-stage-only cells (benchmarks/isolation_cells.py): PT's isolation and verdict."""
    lines = ["", "## PT's isolation alone", "",
             "Rendered by `benchmarks/isolation_cells.py` from `benchmarks/results/isolation_cells.json`: the "
             "committed params.yaml, poison-data and partial-train run by DVC, then PT's isolation scored against "
             "the true poison. Candidates: label → the statistics whose z-score reached `isolation.flag_z`; "
             "test: held-out seeds quarantined / the label's other held-out samples quarantined. Pooled test "
             "(over what the per-label test left; — where the cell was measured before it always ran): held-out "
             "disagreeing samples confidently quarantined / their content-matched controls (defenses/pooled.py).",
             "",
             "| cell | isolated | precision / recall / FPR (%) | candidates | test per candidate | pooled test | "
             "verdict | isolate s | commit |", "|---|---|---|---|---|---|---|---|---|"]
    # The matrix's cells in its order, then any other cell measured (sizes outside the matrix).
    for cell_id in [cell_id for cell_id in order if cell_id in rows] + sorted(set(rows) - set(order)):
        row = rows[cell_id]
        tests = "; ".join(
            (f"{label}: {test.get('held_out_seeds_quarantined', '—')}/{test.get('held_out_seeds', '—')} vs "
             f"{test.get('controls_quarantined', '—')}/{test.get('controls', '—')}"
             f"{' confirmed' if test.get('confirmed') else ' cleared'}{_passes(test)}{_against_null(test)}")
            if "controls" in test or test.get("confirmed") else f"{label}: {_untested(test)}"
            for label, test in sorted(row.get("confirmation", {}).items()))
        candidates = "; ".join(f"{label}: {', '.join(reasons)}" for label, reasons in sorted(row["candidates"].items()))
        pooled = row.get("pooled_test") or {}
        pooled_text = (f"{pooled['held_out_pooled_confident']}/{pooled['held_out_pooled']} vs "
                       f"{pooled['controls_confident']}/{pooled['controls']}"
                       f"{' confirmed' if pooled.get('confirmed') else ' cleared'}"
                       if "held_out_pooled" in pooled else "—" if "pooled_test" in row else "not recorded")
        pooled_text += "".join(
            f"; label {label} {'re-judged' if test['explained'] else 'kept'}: its isolated "
            f"{test['isolated_pooled_quarantined']}/{test['isolated']} vs others {test['others_pooled_quarantined']}/"
            f"{test['others']}" + (f", {test['kept']} kept" if test["explained"] else "")
            for label, test in (pooled.get("rejudged") or {}).items())
        lines.append(f"| {cell_id} | {row['isolated_count']} | {_pct(row.get('isolation_precision'))} / "
                     f"{_pct(row.get('isolation_recall'))} / {_pct(row.get('isolation_false_positive_rate'))} "
                     f"| {candidates or '—'} | {tests or '—'} | {pooled_text} | {row['verdict']} "
                     f"| {row['isolate_seconds']:.0f} "
                     f"| {row['commit']}{'*' if row.get('variant') else ''} |")
    variants = sorted({row["variant"] for row in rows.values() if row.get("variant")})
    if variants:
        lines += ["", "\\* Measured with a variant of the isolation, not on main: " + "; ".join(variants) + "."]
    return "\n".join(lines) + "\n"
