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
shift, and its observed and expected events size it. Two charts run side by side: ``R = 2``
(more events than the risks predict: risks too low) and ``R = 1/2`` (fewer: risks too high).

At each signal the change behind it is also estimated by maximum likelihood
(:func:`change_point`): among the cases since the chart last started, the case ``τ`` (at or
before the signal) from which the odds of the outcome are the model's times an unknown ``R``
to the last case, and ``R``. The estimate is retrospective — it uses the cases after the
signal too — and assumes that the shift lasted; a shift that ended earlier is diluted. The
profile likelihood ratio over ``τ`` gives a confidence set for the change: the cases with
``2·(ℓ(τ̂) − ℓ(τ)) ≤ c`` where ``(1 − e^(−c/2))² = level`` — the limit law of that statistic
for a small shift (twice the larger of two independent Exp(1) maxima; ``c = 7.35`` at 95 %).
The dates reported span the set, from its first case to its last. In simulated cohorts with a
known change (500 each, four sizes of shift) that span covered the change in 97–99 % of them;
with the χ²₁ cut-off (3.84), which does not hold for a change's position, in only 85–87 %
(``tests/clinfuse/test_cusum.py``). The odds ratio's interval is the Wald interval given the
change's position. In 60 simulated cohorts of 1,600 cases whose odds rose × 2.5 half-way, at
the first signal after the change: the estimate was × 2.52 (median), its 95 % interval held
2.5 in 92 % and the span of dates the change in 98 %; estimated only up to the signal, where
the chart stops because the evidence peaked, it would have been × 3.3, held in 77 %.

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

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ChangePoint",
    "Cusum",
    "CusumChart",
    "change_cut_off",
    "change_point",
    "check_false_alarm",
    "control_limit",
    "cusum_by_group",
    "cusum_path",
    "cusum_weights",
    "describe_change",
    "first_signals",
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


_MAX_LOG_ODDS_RATIO = math.log(100.0)  # the largest shift estimated, either way
_GRID_STEP = 0.01  # of the log odds ratio, for the profile over the change's position


@dataclass(frozen=True)
class ChangePoint:
    """The maximum-likelihood change among a run of cases (:func:`change_point`); indices
    count from the run's first case."""

    index: int
    low: int  # the confidence set's first and last cases
    high: int
    log_odds_ratio: float
    se: float  # of the log odds ratio, given the change's position
    statistic: float  # 2 × the log-likelihood ratio against no change
    level: float


def change_cut_off(level: float) -> float:
    """``c`` with ``(1 − e^(−c/2))² = level``: the profile deviance within which a change's
    position lies at ``level`` (see the module's docstring; also used by
    :mod:`clinfuse.evaluation.segments`)."""
    return float(-2.0 * np.log1p(-np.sqrt(level)))


def change_point(
    y: ArrayLike,
    p: ArrayLike,
    *,
    increase: bool,
    level: float = 0.95,
    latest: int | None = None,
) -> ChangePoint:
    """The case from which the odds of the outcome moved from the model's by a factor ``R``
    and stayed so to the last case, and ``R``, by maximum likelihood (see the module's
    docstring).

    Args:
        y: (N,) 0/1 outcomes of a run of cases in date order.
        p: (N,) the model's risks.
        increase: look for ``R ≥ 1`` (more events than predicted), else ``R ≤ 1``.
        level: of the confidence set for the change's position.
        latest: the last case the change may start at (default: any); the cases after it
            still inform ``R``.
    """
    y_, p_ = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    if len(y_) == 0:
        raise ValueError("no cases to locate a change in")
    last = len(y_) - 1 if latest is None else latest
    if not 0 <= last < len(y_):
        raise ValueError(f"latest is {latest}, not a case among the {len(y_)}")
    return _locate(y_, p_, _profile(y_, p_, increase), increase, 0, last, level)


def _profile(y: np.ndarray, p: np.ndarray, increase: bool) -> np.ndarray:
    """The profile log-likelihood ratio of "from case τ on, odds × e^β" against no change, for
    every ``τ``: the most, over ``β``, of the sum over ``t ≥ τ`` of the CUSUM weights, on a
    grid of ``β`` (refined where it matters by :func:`_locate`). The same for every run that
    ends at the last case, so computed once per chart."""
    n_grid = round(_MAX_LOG_ODDS_RATIO / _GRID_STEP) + 1
    grid = np.linspace(_GRID_STEP, _MAX_LOG_ODDS_RATIO, n_grid - 1) * (1 if increase else -1)
    profile = np.zeros(len(y))
    for beta in grid:
        w = y * beta - np.log1p(np.expm1(beta) * p)
        np.maximum(profile, np.cumsum(w[::-1])[::-1], out=profile)
    return profile


def _locate(
    y: np.ndarray,
    p: np.ndarray,
    profile: np.ndarray,
    increase: bool,
    first: int,
    last: int,
    level: float,
) -> ChangePoint:
    """The change among cases ``first`` to ``last`` (:func:`change_point`), its indices
    counted from ``first``."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, not {level}")
    run = profile[first : last + 1].copy()
    tau = int(np.argmax(run))
    bound = _MAX_LOG_ODDS_RATIO * (1 if increase else -1)
    beta, se, best = _fit_shift(y[first + tau :], p[first + tau :], bound)
    run[tau] = max(run[tau], best)
    inside = np.flatnonzero(2.0 * (run[tau] - run) <= change_cut_off(level))
    return ChangePoint(
        index=tau,
        low=int(inside[0]),
        high=int(inside[-1]),
        log_odds_ratio=beta,
        se=se,
        statistic=float(2.0 * run[tau]),
        level=level,
    )


def _fit_shift(y: np.ndarray, p: np.ndarray, bound: float) -> tuple[float, float, float]:
    """The log odds ratio ``β`` between 0 and ``bound`` that best fits ``y`` against the
    risks ``p`` (Newton's method on the concave log-likelihood), its standard error and its
    log-likelihood ratio against ``β = 0``."""
    offset = np.log(p) - np.log1p(-p)
    lo, hi = min(0.0, bound), max(0.0, bound)
    beta = 0.0
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(offset + beta)))
        info = float(np.sum(q * (1.0 - q)))
        step = float(np.sum(y - q)) / max(info, 1e-12)
        new = float(np.clip(beta + step, lo, hi))
        if abs(new - beta) < 1e-10:
            break
        beta = new
    q = 1.0 / (1.0 + np.exp(-(offset + beta)))
    se = float(1.0 / np.sqrt(max(np.sum(q * (1.0 - q)), 1e-12)))
    ratio = float(np.sum(y * beta - np.log1p(np.expm1(beta) * p)))
    return beta, se, ratio


@dataclass
class CusumChart:
    """One chart: its odds ratio, limit, values and signals (:func:`cusum_path`), and the
    change estimated at each listed signal (:func:`change_point`)."""

    odds_ratio: float
    limit: float
    path: np.ndarray
    signals: list[tuple[int, int]]
    changes: list[ChangePoint] = field(default_factory=list)

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

    @property
    def excess(self) -> np.ndarray:
        """The variable life-adjusted display (Lovegrove et al. 1997): after each case in date
        order, the events observed so far minus those the model's risks expected."""
        return np.cumsum(self.y - self.p)

    def _day(self, index: int) -> str:
        return str(self.dates[index].astype("datetime64[D]"))

    def _signal(self, chart: CusumChart, k: int) -> dict[str, Any]:
        start, end = chart.signals[k]
        out: dict[str, Any] = {
            "index": end + 1,
            "date": self._day(end),
            "since": self._day(start),
            "n_cases": end + 1 - start,
            "observed": int(self.y[start : end + 1].sum()),
            "expected": float(self.p[start : end + 1].sum()),
        }
        if k < len(chart.changes):
            change, first = chart.changes[k], _run_start(chart.signals, k)
            at = first + change.index  # the change's cases: from it to the last one
            from scipy.stats import norm

            z = float(norm.ppf(0.5 + change.level / 2))
            out["change"] = {
                "index": at + 1,
                "date": self._day(at),
                "low": self._day(first + change.low),
                "high": self._day(first + change.high),
                "level": change.level,
                "n_cases": len(self.y) - at,
                "observed": int(self.y[at:].sum()),
                "expected": float(self.p[at:].sum()),
                "odds_ratio": float(np.exp(change.log_odds_ratio)),
                "odds_ratio_low": float(np.exp(change.log_odds_ratio - z * change.se)),
                "odds_ratio_high": float(np.exp(change.log_odds_ratio + z * change.se)),
                "statistic": change.statistic,
                # the odds since the best start are compatible with the model's: the shift the
                # chart saw reverted before the last case (the change model wants it lasting)
                "lasting": not (
                    np.exp(change.log_odds_ratio - z * change.se)
                    <= 1.0
                    <= np.exp(change.log_odds_ratio + z * change.se)
                ),
                # the interval reaches the first case this chart's run considered: the shift
                # may have been there before it (from the first case, or before a restart)
                "open_start": change.low == 0,
                "after_restart": k > 0,
            }
        return out

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
                "signals": [
                    self._signal(chart, k) for k in range(min(len(chart.signals), MAX_SIGNALS))
                ],
            }
            for chart in self.charts
        ]
        return {
            "method": "risk-adjusted Bernoulli CUSUM (Steiner et al. 2000)",
            "n": len(self.y),
            "n_undated": self.n_undated,
            "observed": int(self.y.sum()),
            "expected": float(self.p.sum()),
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
        changes = []
        if signals:
            clipped = np.clip(p, 1e-12, 1 - 1e-12)
            profile = _profile(y, clipped, ratio > 1)
            for k, (_, end) in enumerate(signals[:MAX_SIGNALS]):
                first = _run_start(signals, k)
                changes.append(_locate(y, clipped, profile, ratio > 1, first, end, 0.95))
        charts.append(CusumChart(float(ratio), limit, path, signals, changes))
    return Cusum(y, p, dates, charts, false_alarm, n_sim, n_undated=int((~dated).sum()))


def _run_start(signals: list[tuple[int, int]], k: int) -> int:
    """The first case of the run that ended in signal ``k``: the chart starts again after
    each signal, so the change behind it is looked for among the cases since the last one."""
    return signals[k - 1][1] + 1 if k else 0


def describe_change(signal: dict[str, Any]) -> str:
    """The estimated change of a signal in :meth:`Cusum.to_dict`, as words; "" for a signal
    of an evaluation from before changes were estimated."""
    change = signal.get("change")
    if not change:
        return ""
    if change.get("lasting") is False:
        return (
            "no lasting change located: from any case on, the odds stay compatible with the "
            f"model's (at most × {change['odds_ratio']:.2f}, {change['odds_ratio_low']:.2f}–"
            f"{change['odds_ratio_high']:.2f}), so the shift the chart saw did not last to the "
            "last case (the calibration segments date changes that revert)"
        )
    return (
        f"the change is estimated at {change['date']} ({100 * change['level']:g} % CI "
        f"{change['low']} to {change['high']}), the odds × {change['odds_ratio']:.2f} since "
        f"({change['odds_ratio_low']:.2f}–{change['odds_ratio_high']:.2f})"
        + (
            "; its interval reaches the first case charted, so the difference may have been "
            "there from the start rather than a change"
            if change.get("open_start") and not change.get("after_restart")
            else "; its interval reaches the chart's restart, so the shift may have begun before it"
            if change.get("open_start")
            else ""
        )
    )


def check_false_alarm(value: float) -> float:
    """``value`` as a chart's false-alarm probability; a :class:`ConfigError` unless it lies
    in (0, 0.5)."""
    if not 0 < value < 0.5:
        from clinfuse.errors import ConfigError

        raise ConfigError(
            f"cusum_false_alarm is {value}; use a probability in (0, 0.5), e.g. 0.05",
            field="cusum_false_alarm",
            hint="--cusum-false-alarm 0.05 lets each CUSUM chart signal falsely in 5 % of "
            "calibrated cohorts; lower it for fewer, later signals",
        )
    return float(value)


def cusum_by_group(
    y: np.ndarray,
    p: np.ndarray,
    dates: np.ndarray,
    groups: Sequence[Any],
    *,
    false_alarm: float = 0.05,
    n_sim: int = 2000,
    seed: int = 0,
    case_ids: Sequence[str] | None = None,
    min_size: int = 30,
    min_events: int = 5,
) -> dict[str, Any] | None:
    """Risk-adjusted CUSUM charts per group (per site, say): a shift at one site is diluted in
    the pooled chart of all of them.

    Each group's charts use the dated cases of that group only, with limits simulated from
    its own risks at ``false_alarm / k`` for the ``k`` groups charted (Bonferroni), so that
    each direction signals falsely at any group with probability at most ``false_alarm``.
    A group with fewer than ``min_size`` dated cases or ``min_events`` events or non-events
    is left out and named (as the subgroup tables suppress it).

    Returns:
        None with fewer than two groups charted; else ``false_alarm`` (the family's),
        ``false_alarm_each``, ``groups`` ({group: :meth:`Cusum.to_dict`}) and ``left_out``
        ({group: reason}).
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    dates = np.asarray(dates, dtype="datetime64[ns]")
    from clinfuse.evaluation.subgroups import group_labels

    labels = group_labels(groups)  # the subgroup tables' names, "(missing)" included
    dated = ~np.isnat(dates)
    kept, left_out = [], {}
    for name in sorted(set(labels[dated])):
        sel = dated & (labels == name)
        events = int(y[sel].sum())
        if sel.sum() < min_size or events < min_events or sel.sum() - events < min_events:
            left_out[name] = f"fewer than {min_size} dated cases or {min_events} events/non-events"
        else:
            kept.append(name)
    if len(kept) < 2:
        return None
    each = false_alarm / len(kept)
    ids = None if case_ids is None else np.asarray(case_ids, dtype=str)
    charts = {}
    for k, name in enumerate(kept):
        sel = labels == name
        charts[name] = risk_adjusted_cusum(
            y[sel],
            p[sel],
            dates[sel],
            false_alarm=each,
            n_sim=n_sim,
            seed=seed + k,
            case_ids=None if ids is None else ids[sel].tolist(),
        ).to_dict()
    return {
        "false_alarm": false_alarm,
        "false_alarm_each": each,
        "groups": charts,
        "left_out": left_out,
    }


def first_signals(by_group: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any], dict]]:
    """``(group, chart, its first signal)`` for each chart of :func:`cusum_by_group`'s result
    that signalled (nothing for None)."""
    for group, cusum in ((by_group or {}).get("groups") or {}).items():
        for chart in cusum["charts"]:
            if chart["n_signals"]:
                yield group, chart, chart["signals"][0]
