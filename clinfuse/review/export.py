"""Reviews as CSV for adjudication studies."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import fields

from clinfuse.review.store import Review

__all__ = ["EXPORT_COLUMNS", "reviews_csv"]

EXPORT_COLUMNS = tuple(f.name for f in fields(Review))
"""Columns of the export, in order (the ``reviews`` table)."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """Neutralise spreadsheet formulas in free text (a comment starting with ``=``)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def reviews_csv(reviews: Sequence[Review]) -> bytes:
    """UTF-8 CSV (with header) of ``reviews``; text cells that a spreadsheet would run
    as a formula are prefixed with ``'``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for r in reviews:
        d = r.as_dict()
        writer.writerow([_cell(d[c]) for c in EXPORT_COLUMNS])
    return buf.getvalue().encode("utf-8")
