"""The one significance test the isolation rules share."""

from __future__ import annotations


def more_often_p_value(hits: int, count: int, control_hits: int, control_count: int) -> float:
    """One-sided Fisher exact test: p-value of "hits/count is no larger a share than control_hits/control_count"."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[hits, count - hits], [control_hits, control_count - control_hits]],
                              alternative="greater")[1])
