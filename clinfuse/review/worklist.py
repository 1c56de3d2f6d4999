"""Worklist filters and sort orders (pure functions over :meth:`RunView.worklist` tables)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from clinfuse.errors import ConfigError

__all__ = ["SORT_KEYS", "STATUS_FILTERS", "filter_worklist", "sort_worklist"]

STATUS_FILTERS: dict[str, str] = {
    "all cases": "all",
    "not yet reviewed by me": "mine_open",
    "reviewed by me": "mine_done",
    "not reviewed by anyone": "none",
    "reviewed by someone": "any",
}
"""Labels of the review-status filter and their codes."""

SORT_KEYS = ("risk", "uncertainty", "case")


def filter_worklist(
    table: pd.DataFrame,
    *,
    sites: Sequence[str] | None = None,
    status: str = "all cases",
    bands: Sequence[str] | None = None,
    modalities: Sequence[str] = (),
    conformal_sets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows of ``table`` matching every filter.

    Args:
        sites: keep these sites (None: all).
        status: a key or value of :data:`STATUS_FILTERS`.
        bands: keep these positions against the threshold (``above``, ``straddles``, ``below``).
        modalities: keep cases that have all of these.
        conformal_sets: keep cases whose conformal set is one of these (``positive``,
            ``negative``, ``uncertain``, ``empty``; None: all).
    """
    code = STATUS_FILTERS.get(status, status)
    if code not in STATUS_FILTERS.values():
        raise ConfigError(f"unknown review-status filter {status!r}", field="status")
    keep = pd.Series(True, index=table.index)
    if sites is not None:
        keep &= table["site"].isin(list(sites))
    if bands is not None:
        keep &= table["vs_threshold"].isin(list(bands))
    for m in modalities:
        keep &= table[m].astype(bool)
    if conformal_sets is not None and "conformal_set" in table.columns:
        keep &= table["conformal_set"].isin(list(conformal_sets))
    mine = table["my_decision"].astype(str) != ""
    anyone = table["n_reviewers"] > 0
    keep &= {
        "all": pd.Series(True, index=table.index),
        "mine_open": ~mine,
        "mine_done": mine,
        "none": ~anyone,
        "any": anyone,
    }[code]
    return table[keep]


def sort_worklist(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """Highest risk first (``risk``), widest uncertainty band first (``uncertainty``), or by id."""
    if by == "risk":
        return table.sort_values(["risk", "case_id"], ascending=[False, True], kind="stable")
    if by == "uncertainty":
        return table.sort_values(["uncertainty", "risk"], ascending=[False, False], kind="stable")
    if by == "case":
        return table.sort_values("case_id", kind="stable")
    raise ConfigError(f"unknown sort key {by!r}; use one of {SORT_KEYS}", field="sort")
