"""Calibration in segments of time: how many changes, when, and by how much — a change
that reverts included.

A CUSUM signal (:mod:`clinfuse.evaluation.cusum`) dates one lasting shift. Practice also
changes twice — a new assay in March, the old one back in June — and a single shift then
misdates both. Here the dated cases are cut into consecutive segments in each of which the
odds of the outcome are the model's times a constant ``e^βⱼ``::

    logit P(yᵢ = 1) = logit pᵢ + βⱼ    for the cases of segment j

For every number of changes ``K`` up to ``max_changes``, the cuts that maximize the
likelihood are found exactly by dynamic programming over the days (the segment
neighbourhood search; Auger & Lawrence, Bull Math Biol 1989;51:39–54), each segment's ``β``
profiled on a grid of step 0.01. ``K`` is chosen by the Bayesian information criterion,
``−2 log L + (2K + 1) · log n`` (a change costs its position and its ``β``; Yao, Stat Probab
Lett 1988;6:181–9). Cuts fall between days, and a segment holds at least ``min_cases`` cases
and ``min_events`` events and non-events. Each segment's ``β`` is then refitted exactly, with
its Wald interval given the cuts (which makes it a little narrow: the cuts were chosen on the
same outcomes). Each change's date gets a span: the days it could move to, between its
neighbours, with the profile deviance within ``c`` of the best, ``(1 − e^(−c/2))² = level``
(the cut-off :func:`~clinfuse.evaluation.cusum.change_point` uses for one change). With more than ``max_days`` distinct days, neighbouring days are pooled into
``max_days`` blocks of about equal case counts, and cuts fall between blocks.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from clinfuse.evaluation.cusum import change_cut_off

__all__ = ["describe_segments", "segment_calibration", "segments_by_group"]

_STEP = 0.01
_BOUND = math.log(100.0)  # the largest odds ratio, either way


def _blocks(days: np.ndarray, counts: np.ndarray, max_days: int) -> np.ndarray:
    """Block index of each distinct day: the days themselves, or ``max_days`` runs of
    neighbouring days with about equal case counts."""
    if len(days) <= max_days:
        return np.arange(len(days))
    share = np.cumsum(counts) / counts.sum()
    return np.minimum((share * max_days - 1e-9).astype(int), max_days - 1)


def segment_calibration(
    y: ArrayLike,
    p: ArrayLike,
    dates: ArrayLike,
    *,
    max_changes: int = 4,
    min_cases: int = 30,
    min_events: int = 5,
    level: float = 0.95,
    max_days: int = 400,
) -> dict[str, Any]:
    """Segment the dated cases by changes of the model's calibration in the large.

    Args:
        y: (N,) 0/1 outcomes.
        p: (N,) the model's risks.
        dates: (N,) dates (``datetime64``; NaT cases are left out).
        max_changes: the most changes considered.
        min_cases, min_events: the least cases, and events and non-events, in a segment.
        level: of each segment's odds-ratio interval.
        max_days: the most distinct days cut between (more are pooled into blocks).

    Returns:
        ``{"n_changes", "changes", "segments", "criterion", "by_changes", "n_cases",
        "granularity"}``: each segment's ``start``, ``end``, ``n_cases``, ``n_events``,
        ``expected``, ``odds_ratio`` with ``ci_low``/``ci_high`` and ``log_odds_ratio``;
        ``changes``: the first day of each segment after the first, and ``change_spans``
        their ``date``, ``low`` and ``high``; ``by_changes``: the
        BIC and log-likelihood of the best segmentation with 0, 1, … changes (None where
        no segmentation fits the minimum sizes).

    Raises:
        ValueError: mismatched lengths or a setting out of range.
    """
    from clinfuse.calibration import fit_logistic

    y_ = np.asarray(y, dtype=float)
    q = np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    d_ = np.asarray(dates, dtype="datetime64[D]")
    if not len(y_) == len(q) == len(d_):
        raise ValueError(f"y, p and dates differ in length: {len(y_)}, {len(q)}, {len(d_)}")
    if max_changes < 0 or min_cases < 1 or min_events < 0 or not 0 < level < 1:
        raise ValueError("max_changes ≥ 0, min_cases ≥ 1, min_events ≥ 0, 0 < level < 1")
    keep = ~np.isnat(d_)
    y_, q, d_ = y_[keep], q[keep], d_[keep]
    order = np.argsort(d_, kind="stable")
    y_, q, d_ = y_[order], q[order], d_[order]
    offset = np.log(q) - np.log1p(-q)
    days, day_of_case, counts = np.unique(d_, return_inverse=True, return_counts=True)
    block_of_day = _blocks(days, counts, max_days)
    block = block_of_day[day_of_case]
    n_blocks = int(block.max()) + 1 if len(block) else 0

    # per block and grid value of β: the log-likelihood of its cases; cumulated over blocks
    grid = np.arange(-_BOUND, _BOUND + _STEP / 2, _STEP)
    loglik = np.zeros((len(grid), n_blocks + 1))
    for g, beta in enumerate(grid):
        eta = offset + beta
        per_case = y_ * eta - np.logaddexp(0.0, eta)
        loglik[g, 1:] = np.cumsum(np.bincount(block, per_case, minlength=n_blocks))
    cases = np.concatenate([[0], np.cumsum(np.bincount(block, minlength=n_blocks))])
    events = np.concatenate([[0], np.cumsum(np.bincount(block, y_, minlength=n_blocks))])

    # cost[s, t]: −2 × the profile log-likelihood of blocks s..t−1 as one segment
    cost = np.full((n_blocks + 1, n_blocks + 1), np.inf)
    for s in range(n_blocks):
        n_seg = cases[s + 1 :] - cases[s]
        e_seg = events[s + 1 :] - events[s]
        ok = (n_seg >= min_cases) & (e_seg >= min_events) & (n_seg - e_seg >= min_events)
        best = (loglik[:, s + 1 :] - loglik[:, s : s + 1]).max(axis=0)
        cost[s, s + 1 :] = np.where(ok, -2.0 * best, np.inf)

    # segment neighbourhood: F[k, t] = best cost of blocks 0..t−1 in k + 1 segments
    n = len(y_)
    F = np.full((max_changes + 1, n_blocks + 1), np.inf)
    back = np.zeros((max_changes + 1, n_blocks + 1), dtype=int)
    F[0] = cost[0]
    for k in range(1, max_changes + 1):
        total = F[k - 1][:, None] + cost  # [s, t]: k segments up to s, one more s..t−1
        back[k] = np.argmin(total, axis=0)
        F[k] = total[back[k], np.arange(n_blocks + 1)]
    by_changes: list[dict[str, Any]] = []
    for k in range(max_changes + 1):
        dev = F[k, n_blocks] if n_blocks else np.inf
        fits = bool(np.isfinite(dev))
        by_changes.append(
            {
                "n_changes": k,
                "log_likelihood": float(-dev / 2.0) if fits else None,
                "bic": float(dev + (2 * k + 1) * math.log(max(n, 1))) if fits else None,
            }
        )
    fitted = [r for r in by_changes if r["bic"] is not None]
    result: dict[str, Any] = {
        "criterion": "BIC: -2 log L + (2K + 1) log n",
        "n_cases": n,
        "n_undated": int((~keep).sum()),
        "granularity": "days" if n_blocks == len(days) else f"{n_blocks} blocks of days",
        "by_changes": by_changes,
        "min_cases": min_cases,
        "min_events": min_events,
    }
    if not fitted:
        result.update(n_changes=None, changes=[], segments=[])
        result["note"] = (
            f"too few cases for one segment of {min_cases} cases with {min_events} events "
            "and non-events"
        )
        return result
    k = int(min(fitted, key=lambda r: float(r["bic"]))["n_changes"])
    cuts = [n_blocks]
    for j in range(k, 0, -1):
        cuts.append(int(back[j, cuts[-1]]))
    cuts = [0, *reversed(cuts)]

    z = float(norm.ppf(0.5 + level / 2.0))
    segments = []
    for s, t in itertools.pairwise(cuts):
        idx = slice(int(cases[s]), int(cases[t]))
        ys, off = y_[idx], offset[idx]
        fit = fit_logistic(np.ones((len(ys), 1)), ys, offset=off)
        beta, se = (np.nan, np.nan) if fit is None else (fit[0][0], math.sqrt(fit[1][0, 0]))
        segments.append(
            {
                "start": str(d_[idx][0]),
                "end": str(d_[idx][-1]),
                "n_cases": len(ys),
                "n_events": int(ys.sum()),
                "expected": float(q[idx].sum()),
                "log_odds_ratio": float(beta),
                "odds_ratio": float(math.exp(beta)),
                "ci_low": float(math.exp(beta - z * se)),
                "ci_high": float(math.exp(beta + z * se)),
            }
        )
    cut_off = change_cut_off(level)
    spans = []
    for j in range(1, len(cuts) - 1):  # each change moved between its neighbours
        lo, hi = cuts[j - 1], cuts[j + 1]
        profile = cost[lo, lo + 1 : hi] + cost[lo + 1 : hi, hi]
        inside = np.flatnonzero(profile - profile.min() <= cut_off) + lo + 1
        spans.append(
            {
                "date": segments[j]["start"],
                "low": str(d_[int(cases[inside[0]])]),
                "high": str(d_[int(cases[inside[-1]])]),
            }
        )
    result.update(
        n_changes=k,
        changes=[seg["start"] for seg in segments[1:]],
        change_spans=spans,
        segments=segments,
        level=level,
    )
    return result


def segments_by_group(
    y: ArrayLike,
    p: ArrayLike,
    dates: ArrayLike,
    groups: Any,
    *,
    min_cases: int = 30,
    min_events: int = 5,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """:func:`segment_calibration` for each group (each site, say): a change at one site is
    diluted among all sites' cases. A group without two segments' worth of dated cases
    (``2 × min_cases``) or ``min_events`` events and non-events is left out and named.

    Returns:
        None with fewer than two groups segmented; else ``groups`` ({group: the result}) and
        ``left_out`` ({group: reason}).
    """
    from clinfuse.evaluation.subgroups import group_labels

    y_ = np.asarray(y, dtype=float)
    p_ = np.asarray(p, dtype=float)
    d_ = np.asarray(dates, dtype="datetime64[D]")
    labels = group_labels(groups)
    dated = ~np.isnat(d_)
    results, left_out = {}, {}
    for name in sorted(set(labels[dated])):
        sel = dated & (labels == name)
        events = int(y_[sel].sum())
        if sel.sum() < 2 * min_cases or min(events, int(sel.sum()) - events) < min_events:
            left_out[name] = (
                f"fewer than {2 * min_cases} dated cases or {min_events} events/non-events"
            )
            continue
        results[name] = segment_calibration(
            y_[sel], p_[sel], d_[sel], min_cases=min_cases, min_events=min_events, level=level
        )
    if len(results) < 2:
        return None
    return {"groups": results, "left_out": left_out}


def describe_segments(segments: dict[str, Any] | None, column: str) -> str | None:
    """One sentence on the changes :func:`segment_calibration` found (None without any)."""
    if not segments or not segments.get("n_changes"):
        return None
    k = segments["n_changes"]
    spans = ", ".join(f"{c['date']} ({c['low']} to {c['high']})" for c in segments["change_spans"])
    steps = "; ".join(
        f"from {seg['start']} × {seg['odds_ratio']:.2f} ({seg['ci_low']:.2f}–{seg['ci_high']:.2f})"
        for seg in segments["segments"]
    )
    return (
        f"The odds of the outcome against the model's risks changed {k} time{'s' * (k > 1)} "
        f"({column}, segments chosen by BIC; changes on {spans}): {steps}."
    )
