"""Tabular values (labs, vitals, demographics) with explicit missing-value masks.

:class:`TabularEncoder` follows scikit-learn's contract: ``__init__`` stores the
settings, :meth:`~TabularEncoder.fit` learns means/stds (numeric columns) and
levels (categorical columns) from the training cases, and
:meth:`~TabularEncoder.transform` returns standardised values together with a
mask (1 = observed). A missing value is 0 in ``values`` **and** 0 in ``mask``,
never a number that looks like data.

>>> import pandas as pd
>>> enc = TabularEncoder(["age", "sex"]).fit(pd.DataFrame({"age": [50, 70, None], "sex": ["F", "M", "F"]}))
>>> enc.feature_names_
['age', 'sex=F', 'sex=M']
>>> values, mask = enc.transform(pd.DataFrame({"age": [None], "sex": ["M"]}))
>>> mask.tolist()
[[0.0, 1.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.errors import CohortError, ModalityLoadError

__all__ = ["EXTREME_Z", "STRAY_TEXT_SHARE", "TabularEncoder"]

EXTREME_Z = 4.0
"""A numeric value this many training SDs from the training mean is outside the data the
model learnt from (:meth:`TabularEncoder.check_row`)."""


STRAY_TEXT_SHARE = 0.1
"""A column with more than ``max_levels`` levels is still numeric when at most this share
of its cells are text; the cases with text are refused by name."""


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_float(value: Any) -> float | None:
    """``None`` for an empty cell, a float for a number, raise ValueError otherwise."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        return float(value)
    f = float(value)
    return None if math.isnan(f) else f


class TabularEncoder:
    """Standardise numeric columns and one-hot encode categorical ones, with masks.

    Args:
        columns: the manifest columns to use as features, in order.
        max_levels: a non-numeric column with more distinct values than this is
            rejected (it is probably free text or an id, not a category).
        min_std: standard deviations below this are treated as 1 (constant column).
    """

    def __init__(
        self, columns: Sequence[str], *, max_levels: int = 20, min_std: float = 1e-8
    ) -> None:
        self.columns = list(columns)
        self.max_levels = max_levels
        self.min_std = min_std

    # -- fit ----------------------------------------------------------------
    def fit(self, frame: pd.DataFrame) -> TabularEncoder:
        """Learn means/stds and categories from ``frame`` (the training cases)."""
        self._check_columns(frame)
        self.kinds_: dict[str, str] = {}
        self.means_: dict[str, float] = {}
        self.stds_: dict[str, float] = {}
        self.categories_: dict[str, list[str]] = {}
        for col in self.columns:
            kind, values = self._parse(frame[col], col)
            if kind == "numeric":
                self.kinds_[col] = "numeric"
                if values.size == 0:
                    raise CohortError(
                        f"tabular column {col!r} has no values in the training cases",
                        field=col,
                        hint="drop it from `tabular_columns`",
                    )
                std = float(values.std())
                self.means_[col] = float(values.mean())
                self.stds_[col] = std if std > self.min_std else 1.0
            else:
                self.kinds_[col] = "categorical"
                self.categories_[col] = values
        return self._name_features()

    def summarize(self, frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
        """What :meth:`from_summaries` needs from one site's training cases, per column.

        A numeric column gives its count, mean and sum of squared deviations (``n``,
        ``mean``, ``m2``); a categorical one its levels. No single value leaves in it
        except the category names.

        Raises:
            CohortError: a column missing from ``frame``, or a non-numeric one with more
                than ``max_levels`` distinct values (free text or an id must not be sent).
        """
        self._check_columns(frame)
        out: dict[str, dict[str, Any]] = {}
        for col in self.columns:
            kind, values = self._parse(frame[col], col)
            if kind == "numeric":
                n = int(values.size)
                mean = float(values.mean()) if n else 0.0
                m2 = float(((values - mean) ** 2).sum()) if n else 0.0
                out[col] = {"kind": "numeric", "n": n, "mean": mean, "m2": m2}
            else:
                out[col] = {"kind": "categorical", "levels": values}
        return out

    @classmethod
    def from_summaries(
        cls,
        columns: Sequence[str],
        summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
        *,
        max_levels: int = 20,
        min_std: float = 1e-8,
    ) -> TabularEncoder:
        """The encoder :meth:`fit` would learn from every site's training cases pooled,
        from each site's :meth:`summarize` (``summaries``: site name → its summary).

        Means and standard deviations are combined exactly (Chan et al.'s pairwise update of
        the sums of squared deviations); categories are the union of the sites' levels.

        Raises:
            CohortError: a column numeric at some sites and not at others, a numeric column
                without any value, or more than ``max_levels`` levels over all sites.
        """
        enc = cls(columns, max_levels=max_levels, min_std=min_std)
        enc.kinds_, enc.means_, enc.stds_, enc.categories_ = {}, {}, {}, {}
        for col in enc.columns:
            parts = {site: s[col] for site, s in summaries.items()}
            kinds = {site: str(p["kind"]) for site, p in parts.items()}
            if len(set(kinds.values())) > 1:
                numeric = sorted(k for k, v in kinds.items() if v == "numeric")
                other = sorted(k for k, v in kinds.items() if v != "numeric")
                raise CohortError(
                    f"tabular column {col!r} holds numbers at {', '.join(numeric)} but text at "
                    f"{', '.join(other)}",
                    field=col,
                    hint="make the column numeric at every site (or text at every site), or "
                    "drop it from `tabular_columns`",
                )
            if set(kinds.values()) == {"numeric"}:
                n = sum(int(p["n"]) for p in parts.values())
                if n == 0:
                    raise CohortError(
                        f"tabular column {col!r} has no values in any site's training cases",
                        field=col,
                        hint="drop it from `tabular_columns`",
                    )
                mean = sum(int(p["n"]) * float(p["mean"]) for p in parts.values()) / n
                m2 = sum(
                    float(p["m2"]) + int(p["n"]) * (float(p["mean"]) - mean) ** 2
                    for p in parts.values()
                )
                std = math.sqrt(max(m2, 0.0) / n)
                enc.kinds_[col] = "numeric"
                enc.means_[col] = mean
                enc.stds_[col] = std if std > min_std else 1.0
            else:
                levels = sorted({str(v) for p in parts.values() for v in p["levels"]})
                if len(levels) > max_levels:
                    raise CohortError(
                        f"tabular column {col!r} has {len(levels)} distinct values over all "
                        f"sites (more than {max_levels})",
                        field=col,
                        hint="drop it from `tabular_columns` or encode it numerically",
                    )
                enc.kinds_[col] = "categorical"
                enc.categories_[col] = levels
        return enc._name_features()

    def _check_columns(self, frame: pd.DataFrame) -> None:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise CohortError(
                f"tabular column(s) {missing} are not in the manifest (columns: {', '.join(map(str, frame.columns))})",
                field="tabular_columns",
                hint="fix `tabular_columns` in the config",
            )

    def _parse(self, series: pd.Series, col: str) -> tuple[str, Any]:
        """``("numeric", finite values)`` or ``("categorical", sorted levels)`` of one column.

        A column of numbers is numeric; its infinite cells are left out of the statistics
        (their cases are refused by :meth:`transform_row`). A column with text is
        categorical when it has at most ``max_levels`` levels. With more, it is numeric if
        at most :data:`STRAY_TEXT_SHARE` of its cells are text (a stray ``<0.5`` in a lab
        column: those cases are refused by name), and refused otherwise.

        Raises:
            CohortError: a column with text in more than ``STRAY_TEXT_SHARE`` of its cells
                and more than ``max_levels`` levels (free text or an id); the error quotes
                a few of the text cells.
        """
        cells = [x for x in series if not _is_empty(x)]
        numbers: list[float] = []
        text: list[Any] = []
        for x in cells:
            try:
                v = _as_float(x)
            except (TypeError, ValueError):
                text.append(x)
                continue
            if v is not None and math.isfinite(v):
                numbers.append(v)
        if not text:
            return "numeric", np.asarray(numbers, dtype=float)
        levels = sorted({str(x).strip() for x in cells})
        if len(levels) <= self.max_levels:
            return "categorical", levels
        if len(text) <= STRAY_TEXT_SHARE * len(cells):
            return "numeric", np.asarray(numbers, dtype=float)
        examples = ", ".join(repr(str(x).strip()) for x in list(dict.fromkeys(text))[:3])
        raise CohortError(
            f"tabular column {col!r} is not numeric and has {len(levels)} distinct values "
            f"(more than {self.max_levels}); {len(text)} of its {len(cells)} cells are not "
            f"numbers (e.g. {_shorten(examples)}); it looks like free text or an id",
            field=col,
            hint="drop it from `tabular_columns` or encode it numerically",
        )

    def _name_features(self) -> TabularEncoder:
        names: list[str] = []
        for col in self.columns:
            if self.kinds_[col] == "numeric":
                names.append(col)
            else:
                names.extend(f"{col}={lvl}" for lvl in self.categories_[col])
        self.feature_names_ = names
        return self

    @property
    def n_features(self) -> int:
        return len(self.feature_names_)

    # -- transform ----------------------------------------------------------
    def transform_row(
        self, row: Mapping[str, Any], *, case_id: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode one case.

        Returns:
            ``values`` (F,) float32, standardised, 0 where missing, and
            ``mask`` (F,) float32, 1 where observed.

        Raises:
            ModalityLoadError: a numeric column holds something that is not a number.
        """
        self._check_fitted()
        values = np.zeros(self.n_features, dtype=np.float32)
        mask = np.zeros(self.n_features, dtype=np.float32)
        j = 0
        for col in self.columns:
            raw = row.get(col)
            if self.kinds_[col] == "numeric":
                try:
                    v = _as_float(raw)
                except (TypeError, ValueError) as e:
                    raise ModalityLoadError(
                        f"tabular value {raw!r} is not a number",
                        case_id=case_id,
                        field=col,
                        hint="fix the cell or leave it empty if unknown",
                    ) from e
                if v is not None:
                    if not math.isfinite(v):
                        raise ModalityLoadError(
                            f"tabular value {raw!r} is not finite",
                            case_id=case_id,
                            field=col,
                            hint="leave the cell empty if unknown",
                        )
                    values[j] = (v - self.means_[col]) / self.stds_[col]
                    mask[j] = 1.0
                j += 1
            else:
                levels = self.categories_[col]
                if not _is_empty(raw):
                    key = str(raw).strip()
                    if key in levels:
                        values[j + levels.index(key)] = 1.0
                        mask[j : j + len(levels)] = 1.0
                    # an unseen level is treated as missing (mask stays 0)
                j += len(levels)
        return values, mask

    def check_row(self, row: Mapping[str, Any]) -> list[str]:
        """What in one case lies outside the training data: numeric values more than
        :data:`EXTREME_Z` training SDs from the training mean, and category levels never
        seen in training (which :meth:`transform_row` treats as missing). The level itself
        is not repeated (a stray free-text cell should not be copied into outputs)."""
        self._check_fitted()
        out: list[str] = []
        for col in self.columns:
            raw = row.get(col)
            if _is_empty(raw):
                continue
            if self.kinds_[col] == "numeric":
                try:
                    v = _as_float(raw)
                except (TypeError, ValueError):
                    continue  # transform_row reports it
                if v is None or not math.isfinite(v):
                    continue
                mean, std = self.means_[col], self.stds_[col]
                z = (v - mean) / std
                if abs(z) > EXTREME_Z:
                    out.append(
                        f"{col} {v:g} is {abs(z):.1f} SD {'above' if z > 0 else 'below'} the "
                        f"training mean ({mean:.3g} ± {std:.3g})"
                    )
            elif str(raw).strip() not in self.categories_[col]:
                out.append(f"{col} has a level never seen in training (treated as missing)")
        return out

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode every row of ``frame``: ``values`` and ``mask``, both (N, F) float32."""
        self._check_fitted()
        ids = frame["case_id"].tolist() if "case_id" in frame.columns else [None] * len(frame)
        out_v = np.zeros((len(frame), self.n_features), dtype=np.float32)
        out_m = np.zeros_like(out_v)
        for i, (rec, cid) in enumerate(zip(frame.to_dict("records"), ids, strict=True)):
            out_v[i], out_m[i] = self.transform_row(rec, case_id=cid)
        return out_v, out_m

    def fit_transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return self.fit(frame).transform(frame)

    # -- persistence --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (saved in the run folder)."""
        self._check_fitted()
        return {
            "columns": self.columns,
            "max_levels": self.max_levels,
            "min_std": self.min_std,
            "kinds": self.kinds_,
            "means": self.means_,
            "stds": self.stds_,
            "categories": self.categories_,
            "feature_names": self.feature_names_,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> TabularEncoder:
        enc = cls(state["columns"], max_levels=state["max_levels"], min_std=state["min_std"])
        enc.kinds_ = dict(state["kinds"])
        enc.means_ = {k: float(v) for k, v in state["means"].items()}
        enc.stds_ = {k: float(v) for k, v in state["stds"].items()}
        enc.categories_ = {k: list(v) for k, v in state["categories"].items()}
        enc.feature_names_ = list(state["feature_names"])
        return enc

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise RuntimeError("TabularEncoder is not fitted; call fit() first")


def _is_empty(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()
