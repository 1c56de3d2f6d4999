"""Small-cell suppression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from privacy.suppression import is_small_cell, suppress_counts, suppress_small_cells


def test_counts_below_k_hidden_zero_kept() -> None:
    out = suppress_counts([0, 1, 4, 5, 100], k=5)
    assert np.isnan(out[1]) and np.isnan(out[2])
    assert out[0] == 0 and out[3] == 5 and out[4] == 100
    assert is_small_cell(3) and not is_small_cell(0) and not is_small_cell(5)


def test_table_copy_and_complementary() -> None:
    t = pd.DataFrame({"n": [120, 3, 40, 7], "label": ["a", "b", "c", "d"]})
    plain = suppress_small_cells(t, k=5)
    assert plain["n"].isna().tolist() == [False, True, False, False]
    assert t["n"].tolist() == [120, 3, 40, 7]  # input untouched
    comp = suppress_small_cells(t, k=5, complementary=True)
    # the one hidden cell could be recovered from the total: the smallest other goes too
    assert comp["n"].isna().tolist() == [False, True, False, True]
    assert comp["label"].tolist() == t["label"].tolist()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be"):
        suppress_counts([1], k=0)
    with pytest.raises(ValueError, match="non-negative"):
        suppress_counts([-1])
    with pytest.raises(KeyError, match="not in the table"):
        suppress_small_cells(pd.DataFrame({"n": [1]}), columns=["m"])
