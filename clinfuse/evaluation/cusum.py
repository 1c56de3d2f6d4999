"""Risk-adjusted CUSUM charts: has the model's calibration shifted, and since when?

A drift test (:mod:`clinfuse.evaluation.temporal`) looks for a steady trend over the whole
span; a model can also break at one moment — a new assay, a coding change, an outbreak. The
risk-adjusted Bernoulli CUSUM of Steiner et al. (Biostatistics 2000;1:441–52) watches the
cases one by one in date order and accumulates the evidence that the odds of the outcome
have moved by a factor ``R`` away from the model's risk ``p``. Case ``t`` adds the
log-likelihood ratio of "odds × R" against "the model is right"::

    W_t = y_t · log R − log(1 − p_t + R · p_t)

and the chart is ``X_t = max(0, X_{t−1} + W_t)``, ``X_0 = 0``. It signals when ``X_t``
reaches the control limit ``h`` and then starts again from 0, so a lasting shift signals
again. The climb to a signal began after the chart last stood at 0: its first case dates the
shift, and its observed and expected events size it. Two charts run side by side: ``R = 2`` (more events than the risks predict: risks
too low) and ``R = 1/2`` (fewer: risks too high).

The control limit is set by simulation for the cases at hand: outcomes are drawn from the
model's own risks, in the cases' order, and ``h`` is the smallest limit that at most a
share ``false_alarm`` of these in-control sequences ever reach. So, were the model
calibrated throughout, a chart would signal anywhere in this cohort with probability about
``false_alarm`` (each chart separately; ``n_sim`` draws set how closely).

>>> chart = risk_adjusted_cusum(y, p, dates)  # doctest: +SKIP
>>> chart.to_dict()["charts"][0]["signals"][0]  # doctest: +SKIP
{'index': 412, 'date': '2022-03-14', 'since': '2022-01-20', 'n_cases': 96, 'observed': 41,
 'expected': 22.7}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Cusum",
    "CusumChart",
    "control_limit",
    "cusum_path",
    "cusum_weights",
    "risk_adjusted_cusum",
]

MAX_SIGNALS = 50
"""Signals listed per chart in :meth:`Cusum.to_dict` (all are counted)."""

_CHUNK = 2**22  # simulated outcomes held at once (sequences × cases): 32 MiB of float64


def cusum_weights(y: ArrayLike, p: ArrayLike, odds_ratio: float) -> np.ndarray:
    """Each case's log-likelihood ratio ``W_t`` for a shift of the odds by ``odds_ratio``.

    ``y`` may hold several sequences in its leading axes; ``p`` broadcasts against it.
    """
    if not odds_ratio > 0 or odds_ratio == 1:
        raise ValueError(f"the odds ratio to detect must be positive and not 1, not {odds_ratio}")
    p = np.asarray(p, dtype=float)
    return np.asarray(y, dtype=float) * np.log(odds_ratio) - np.log1p((odds_ratio - 1) * p)


def _running(w: np.ndarray) -> np.ndarray:
    """``X_t = max(0, X_{t−1} + W_t)`` along the last axis, without restarts: the reflected
    random walk ``S_t − min(0, min_{s≤t} S_s)`` of the partial sums ``S``."""
    s = np.cumsum(w, axis=-1)
    return s - np.minimum(np.minimum.accumulate(s, axis=-1), 0.0)


def cusum_path(w: np.ndarray, limit: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The chart of weights ``w`` with control limit ``limit``, restarting from 0 after each
    signal.

    Returns:
        (the chart's values (N,), its signals as 0-based ``(start, end)``: ``end`` is the
        case that reached the limit, ``start`` the first case of the climb to it — the one
        after the chart last stood at 0, the usual estimate of when the shift began)
    """
    path = np.empty(len(w))
    signals: list[tuple[int, int]] = []
    x, start = 0.0, 0
    for t, wt in enumerate(np.asarray(w, dtype=float)):
        x = max(0.0, x + wt)
        path[t] = x
        if x == 0.0:
            start = t + 1
        elif x >= limit:
            signals.append((start, t))
            x, start = 0.0, t + 1
    return path, signals


def control_limit(
    p: np.ndarray,
    odds_ratio: float,
    *,
    false_alarm: float = 0.05,
    n_sim: int = 2000,
    rng: np.random.Generator | None = None,
) -> float:
    """The smallest limit that at most ``false_alarm`` of ``n_sim`` simulated in-control
    sequences reach (outcomes drawn from ``p``, in order; see the module's docstring)."""
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm must lie between 0 and 1, not {false_alarm}")
    if n_sim < 1:
        raise ValueError(f"n_sim must be at least 1, not {n_sim}")
    rng = np.random.default_rng(0) if rng is None else rng
    p = np.asarray(p, dtype=float)
    per_chunk = max(1, _CHUNK // max(len(p), 1))
    event, no_event = cusum_weights(1.0, p, odds_ratio), cusum_weights(0.0, p, odds_ratio)
    highest = []
    for start in range(0, n_sim, per_chunk):
        y = rng.random((min(per_chunk, n_sim - start), len(p))) < p
        highest.append(_running(np.where(y, event, no_event)).max(axis=-1, initial=0.0))
    ordered = np.sort(np.concatenate(highest))
    k = int(np.floor(false_alarm * n_sim))  # sequences allowed at or above the limit
    return float(np.nextafter(ordered[n_sim - k - 1], np.inf))


@dataclass
class CusumChart:
    """One chart: its odds ratio, limit, values and signals (:func:`cusum_path`)."""

    odds_ratio: float
    limit: float
    path: np.ndarray
    signals: list[tuple[int, int]]

    @property
    def direction(self) -> str:
        return (
            "more events than predicted" if self.odds_ratio > 1 else "fewer events than predicted"
        )


@dataclass
class Cusum:
    """Risk-adjusted CUSUM charts of a cohort's cases in date order (:func:`risk_adjusted_cusum`)."""

    y: np.ndarray
    p: np.ndarray
    dates: np.ndarray
    charts: list[CusumChart]
    false_alarm: float
    n_sim: int
    n_undated: int = 0

    def _signal(self, start: int, end: int) -> dict[str, Any]:
        return {
            "index": end + 1,
            "date": str(self.dates[end].astype("datetime64[D]")),
            "since": str(self.dates[start].astype("datetime64[D]")),
            "n_cases": end + 1 - start,
            "observed": int(self.y[start : end + 1].sum()),
            "expected": float(self.p[start : end + 1].sum()),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the setting, and per chart its limit, maximum and signals (each with
        its date and position, and the climb to it: the date it began, its cases and their
        observed and expected events)."""
        charts = [
            {
                "odds_ratio": chart.odds_ratio,
                "direction": chart.direction,
                "limit": chart.limit,
                "max": float(chart.path.max(initial=0.0)),
                "n_signals": len(chart.signals),
                "signals": [self._signal(*s) for s in chart.signals[:MAX_SIGNALS]],
            }
            for chart in self.charts
        ]
        return {
            "method": "risk-adjusted Bernoulli CUSUM (Steiner et al. 2000)",
            "n": len(self.y),
            "n_undated": self.n_undated,
            "false_alarm": self.false_alarm,
            "n_sim": self.n_sim,
            "charts": charts,
        }


def risk_adjusted_cusum(
    y: np.ndarray,
    p: np.ndarray,
    dates: np.ndarray,
    *,
    odds_ratios: Sequence[float] = (2.0, 0.5),
    false_alarm: float = 0.05,
    n_sim: int = 2000,
    seed: int = 0,
    case_ids: Sequence[str] | None = None,
) -> Cusum:
    """Risk-adjusted CUSUM charts of the dated cases (see the module's docstring).

    Args:
        y: (N,) 0/1 outcomes.
        p: (N,) calibrated risks.
        dates: (N,) ``datetime64``; NaT cases are left out.
        odds_ratios: the shifts to watch for, one chart each.
        false_alarm: each chart's probability of signalling anywhere in these cases were the
            model calibrated throughout.
        n_sim: simulated in-control sequences that set each limit.
        seed: seeds the simulation.
        case_ids: breaks ties of equal dates (otherwise the input order does).
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    dates = np.asarray(dates, dtype="datetime64[ns]")
    dated = ~np.isnat(dates)
    ties = (
        np.asarray(case_ids, dtype=str)[dated] if case_ids is not None else np.arange(dated.sum())
    )
    order = np.lexsort((ties, dates[dated]))
    y, p, dates = y[dated][order], p[dated][order], dates[dated][order]
    rng = np.random.default_rng(seed)
    charts = []
    for ratio in odds_ratios:
        limit = control_limit(p, ratio, false_alarm=false_alarm, n_sim=n_sim, rng=rng)
        path, signals = cusum_path(cusum_weights(y, p, ratio), limit)
        charts.append(CusumChart(float(ratio), limit, path, signals))
    return Cusum(y, p, dates, charts, false_alarm, n_sim, n_undated=int((~dated).sum()))
