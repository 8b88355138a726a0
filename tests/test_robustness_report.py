"""The robustness matrix's pass/fail rules (benchmarks/robustness_report.py), on hand-made cells."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from robustness_report import criteria, render, render_extra, render_isolation, tally  # noqa: E402


def cell(pt_ca=0.91, pt_asr=0.005, abl=(0.85, 0.05), reference=(0.91, 0.01), recall=0.99, fpr=0.001, rate=0.1,
         verdict="poison_found", isolated=6000, train_size=60000) -> dict:
    isolation = {"isolation_precision": 0.99, "isolation_recall": recall, "isolation_false_positive_rate": fpr,
                 "isolated_count": isolated}
    return {"id": "c", "poison_rate": rate, "train_size": train_size,
            "no_defense": {"clean_accuracy": 0.91, "attack_success_rate": 1.0},
            "pt": {"clean_accuracy": pt_ca, "attack_success_rate": pt_asr, "verdict": verdict, **isolation},
            "abl": {"clean_accuracy": abl[0], "attack_success_rate": abl[1], **isolation},
            "clean_reference": {"clean_accuracy": reference[0], "attack_success_rate": reference[1]}}


def test_a_defended_cell_passes_every_criterion():
    assert criteria(cell()) == {"holds": True, "beats_abl": True, "isolation": True}


def test_each_criterion_fails_on_its_own_cause():
    assert criteria(cell(pt_asr=0.03))["holds"] is False  # above max(2%, reference + 1 point)
    assert criteria(cell(pt_asr=0.03, reference=(0.91, 0.025)))["holds"] is True
    assert criteria(cell(pt_ca=0.89))["holds"] is False  # more than 1.5 points below the reference
    assert criteria(cell(abl=(0.92, 0.05)))["beats_abl"] is False
    assert criteria(cell(recall=0.94))["isolation"] is False
    assert criteria(cell(fpr=0.011))["isolation"] is False
    assert criteria(cell(rate=0.005, recall=0.1))["isolation"] is None  # below 1%: not judged


def test_a_clean_cell_fails_on_a_poison_found_verdict_or_too_much_isolated():
    clean = dict(rate=0.0, isolated=0)
    assert criteria(cell(verdict="inconclusive", **clean)) == {"clean_cell": True}
    assert criteria(cell(verdict="poison_found", **clean)) == {"clean_cell": False}
    assert criteria(cell(verdict="no_poison_found", rate=0.0, isolated=601)) == {"clean_cell": False}


def test_the_table_lists_unmeasured_cells():
    table = render([cell()], ["c", "d"])
    assert "| d | not measured yet |" in table
    assert "| c | 91.00 / 100.00 | 91.00 / 0.50 |" in table


def test_the_tally_counts_each_criterion_only_where_it_applies():
    cells = [cell(), cell(pt_asr=0.03), cell(rate=0.005, recall=0.1), cell(rate=0.0, isolated=0, verdict="inconclusive")]
    line = tally(cells)
    assert "PT holds in 2 of 3 poisoned cells" in line  # the failing ASR; the clean cell is not judged here
    assert "isolation ok in 2 of 2 at rates of 1% and above" in line  # the 0.5% cell is not judged
    assert "clean cells pass in 1 of 1" in line
    assert "beats or ties ABL in 3 of 3" in tally(cells)  # ABL is judged on every poisoned cell
    assert "beats or ties ABL in 0 of 1" in tally([cell(abl=(0.95, 0.0))])
    assert tally(cells[1:2]) in render(cells[1:2], ["c", "d"])  # the table's measured cells
    assert "PT holds in 0 of 1" in tally(cells[1:2])


def test_the_table_names_the_commit_each_cell_ran():
    assert "| 17 | abc1234 |  |" in render([{**cell(), "repro_seconds": 17.0, "key": {"commit": "abc1234"}}], ["c"])
    # an adopted cell: the commit its workspace ran, not the one that recorded it
    adopted = {**cell(), "ran_at": "0123abc", "key": {"commit": "abc1234"}}
    assert "| — | 0123abc |  |" in render([adopted], ["c"])
    assert "| — | ? |  |" in render([{**adopted, "ran_at": None}], ["c"])  # unknown, not the recording commit


def test_cells_outside_the_matrix_get_their_own_table_and_no_unmeasured_rows():
    assert render_extra([]) == ""
    table = render_extra([cell(pt_asr=0.03)])
    assert "## Full cells outside the matrix" in table and "not measured" not in table
    assert "| c | 91.00 / 100.00 | 91.00 / 3.00 |" in table and "| **no** |" in table  # ASR above the bound


def test_the_isolation_table_shows_each_candidate_and_its_test():
    from robustness_report import render_isolation

    row = {"isolated_count": 499, "isolation_precision": 0.982, "isolation_recall": 0.98,
           "isolation_false_positive_rate": 0.002, "candidates": {"0": ["content_disagreement"], "8": ["log_spectral_ratio"]},
           "confirmation": {"0": {"held_out_seeds": 71, "held_out_seeds_quarantined": 68, "controls": 695,
                                  "controls_quarantined": 299, "confirmed": True},
                            "8": {"held_out_seeds": 10, "held_out_seeds_quarantined": 7, "controls": 364,
                                  "controls_quarantined": 258, "confirmed": False}},
           "pooled_test": None, "verdict": "poison_found", "isolate_seconds": 600.0, "commit": "abc"}
    table = render_isolation({"m": row}, ["m", "n"])
    assert "| m | 499 | 98.20 / 98.00 / 0.20 | 0: content_disagreement; 8: log_spectral_ratio |" in table
    assert "0: 68/71 vs 299/695 confirmed; 8: 7/10 vs 258/364 cleared" in table
    assert "| n |" not in table  # only measured cells
    assert "258/364 cleared | — | poison_found |" in table  # a label was confirmed: no pooled test
    pooled = {"held_out_pooled": 6964, "held_out_pooled_confident": 177, "controls": 6964, "controls_confident": 0,
              "confirmed": True}
    table = render_isolation({"m": {**row, "confirmation": {}, "pooled_test": pooled}}, ["m"])
    assert "| — | 177/6964 vs 0/6964 confirmed | poison_found |" in table
    rejudged = {"6": {"isolated": 1416, "isolated_pooled_quarantined": 600, "others": 5184,
                      "others_pooled_quarantined": 20, "p_value": 0.0, "explained": True, "kept": 600}}
    table = render_isolation({"m": {**row, "pooled_test": {**pooled, "rejudged": rejudged}}}, ["m"])
    assert "confirmed; label 6 re-judged: its isolated 600/1416 vs others 20/5184, 600 kept | poison_found |" in table


def test_the_isolation_table_shows_a_later_pass_and_cells_outside_the_matrix():
    from robustness_report import render_isolation

    later = {"held_out_seeds": 49, "held_out_seeds_quarantined": 36, "controls": 117, "controls_quarantined": 35,
             "confirmed": True, "competing_left_out": 230,
             "earlier_passes": [{"held_out_seeds": 49, "held_out_seeds_quarantined": 7, "controls": 117,
                                 "controls_quarantined": 2, "confirmed": False}]}
    row = {"isolated_count": 400, "isolation_precision": 0.99, "isolation_recall": 0.99,
           "isolation_false_positive_rate": 0.001, "candidates": {"0": ["easy_disagreement"]},
           "confirmation": {"0": later}, "pooled_test": None, "verdict": "poison_found", "isolate_seconds": 60.0,
           "commit": "abc"}
    table = render_isolation({"extra-4k": row, "m": row}, ["m"])
    assert "0: 36/49 vs 35/117 confirmed (pass 2, 230 left out; earlier: 7/49 vs 2/117)" in table
    assert table.index("| m |") < table.index("| extra-4k |")  # the matrix first, then the rest


def test_the_isolation_table_says_why_a_candidate_was_not_tested():
    row = {"commit": "abc", "isolated_count": 0, "candidates": {"1": ["easy_tail"], "4": ["easy_tail"]},
           "confirmation": {"1": {"confirmed": False, "seeds": 4, "reason": "cleared untested: 4 seeds leave 2"},
                            "4": {"confirmed": False, "reason": "not tested: easy_tail alone nominated it"}},
           "verdict": "inconclusive", "isolate_seconds": 1.0}
    table = render_isolation({"m": row}, [])
    assert "1: untested (4 seeds); 4: not tested (easy_tail alone; another label confirmed)" in table


def test_the_isolation_table_shows_a_low_loss_mode_candidate_judged_against_the_null_labels():
    judged = {"held_out_seeds": 94, "held_out_seeds_quarantined": 62, "controls": 94, "controls_quarantined": 23,
              "confirmed": False, "null_labels": [1, 2, 3], "null_z": 2.44}
    waiting = {"confirmed": False, "reason": "not tested: seeded from its low-loss mode (the loss statistics alone "
                                             "nominated it), and another label was confirmed"}
    row = {"commit": "abc", "isolated_count": 0, "candidates": {"5": ["diversity_gap"], "7": ["log_spectral_ratio"]},
           "confirmation": {"5": judged, "7": waiting}, "verdict": "inconclusive", "isolate_seconds": 1.0}
    table = render_isolation({"m": row}, [])
    assert "5: 62/94 vs 23/94 cleared (null z 2.4 over 3 labels); 7: not tested (low-loss-mode seeds; another label " \
           "confirmed)" in table
    table = render_isolation({"m": {**row, "confirmation": {"5": {**judged, "null_z": None}}}}, [])
    assert "5: 62/94 vs 23/94 cleared (null: 3 labels, too few)" in table
