"""Small-cell suppression: hide counts below ``k`` before a table leaves the site.

Subgroup tables in evaluation reports and app exports can single out a patient when a cell
counts 1 or 2 people. :func:`suppress_small_cells` blanks every count below ``k`` (and,
optionally, a second cell per row or column so the hidden one cannot be recovered from a
total — complementary suppression).

>>> import pandas as pd
>>> t = pd.DataFrame({"n": [120, 3, 40]}, index=["18-39", "90+", "40-64"])
>>> suppress_small_cells(t, k=5)["n"].tolist()
[120.0, nan, 40.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["is_small_cell", "suppress_counts", "suppress_small_cells"]


def is_small_cell(count: float | int | None, k: int = 5) -> bool:
    """True when ``count`` is a positive count below ``k`` (zero is not suppressed)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if count is None or (isinstance(count, float) and np.isnan(count)):
        return False
    return 0 < count < k


def suppress_counts(counts: Sequence[int] | np.ndarray, k: int = 5) -> np.ndarray:
    """Counts as float with every value in ``(0, k)`` replaced by NaN.

    Args:
        counts: ``(N,)`` non-negative counts.
        k: the threshold; counts ``1 … k-1`` are hidden.

    Returns:
        ``(N,)`` float64 array.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    arr = np.asarray(counts, dtype=np.float64)
    if np.any(arr[~np.isnan(arr)] < 0):
        raise ValueError("counts must be non-negative")
    out = arr.copy()
    out[(arr > 0) & (arr < k)] = np.nan
    return out


def suppress_small_cells(
    table: pd.DataFrame,
    k: int = 5,
    *,
    columns: Sequence[str] | None = None,
    complementary: bool = False,
) -> pd.DataFrame:
    """A copy of ``table`` with count cells in ``(0, k)`` set to NaN.

    Args:
        table: a table of counts (rows = subgroups).
        k: the threshold; counts ``1 … k-1`` are hidden.
        columns: the count columns (default: every numeric column).
        complementary: when a column has exactly one hidden cell, also hide the smallest
            other positive cell of that column, so the hidden one cannot be recovered as
            ``total − sum(shown)``.

    Returns:
        A new DataFrame; the input is not modified.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cols = (
        list(columns)
        if columns is not None
        else [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    )
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table (columns: {list(table.columns)})")
    out = table.copy()
    for c in cols:
        values = out[c].to_numpy(dtype=np.float64)
        hidden = suppress_counts(values, k)
        if complementary:
            n_hidden = int(np.sum(np.isnan(hidden) & ~np.isnan(values)))
            if n_hidden == 1:
                shown = np.where(~np.isnan(hidden) & (values > 0), values, np.inf)
                if np.isfinite(shown).any():
                    hidden[int(np.argmin(shown))] = np.nan
        out[c] = hidden
    return out
