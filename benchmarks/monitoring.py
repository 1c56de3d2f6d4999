"""Deployment checks on 100,000 cases: dates read, metrics per month with the drifts,
class-conditional conformal sets (fit and predict), their coverage per site, the
heterogeneity tests across sites — the analyses `clinfuse evaluate --time-column
--conformal --subgroups` adds — the risk-adjusted CUSUM charts with their simulated limits,
the maximum-likelihood change behind a signal, and `clinfuse monitor`'s per-month comparison
with 10,000 development cases.

Each figure is the time of one call. The CUSUM's limits simulate 2,000 in-control sequences
per chart as reflected random walks (cumulative sums, no loop over cases); its baseline is
the textbook recursion ``X = max(0, X + W)`` looped over cases in Python, timed on 20
sequences in the same process and compared per case-step.
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import Context, timer


def run(ctx: Context) -> None:
    import pandas as pd

    from clinfuse.evaluation.conformal import ConformalSets, coverage_by_group
    from clinfuse.evaluation.cusum import change_point, cusum_weights, risk_adjusted_cusum
    from clinfuse.evaluation.monitor import monitor_periods
    from clinfuse.evaluation.subgroups import group_heterogeneity
    from clinfuse.evaluation.temporal import parse_dates, performance_over_time

    n = 10_000 if ctx.quick else 100_000
    rng = np.random.default_rng(0)
    days = rng.integers(0, 5 * 365, n)
    text = (np.datetime64("2019-01-01") + days.astype("timedelta64[D]")).astype(str).tolist()
    ids = [f"case{i:06d}" for i in range(n)]
    y = (rng.random(n) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.6 * y - 1.2)))
    sites = rng.integers(0, 5, n).astype(str)
    config = {"n_cases": n}
    with timer() as t:
        dates = parse_dates(text, ids, column="encounter_date")
    ctx.emit("monitoring", "parse_dates_s", t(), "s", config=config, higher_is_better=False)
    sets = ConformalSets.fit(y, p, alpha=0.1).predict(p)
    steps = (
        (
            "over_time_s",
            {"period": "month"},
            lambda: performance_over_time(y, p, dates, period="month"),
        ),
        ("conformal_fit_predict_s", {}, lambda: ConformalSets.fit(y, p, alpha=0.1).predict(p)),
        ("conformal_coverage_by_site_s", {"sites": 5}, lambda: coverage_by_group(y, sets, sites)),
        ("heterogeneity_tests_s", {"sites": 5}, lambda: group_heterogeneity(y, p, sites)),
    )
    for figure, extra, step in steps:
        with timer() as t:
            step()
        ctx.emit("monitoring", figure, t(), "s", config={**config, **extra}, higher_is_better=False)

    # risk-adjusted CUSUM: two charts, 2,000 simulated sequences each, against a Python loop
    n_sim = 2000
    with timer() as t:
        risk_adjusted_cusum(y, p, dates, n_sim=n_sim)
    vectorised = t() / (2 * n_sim * n)  # seconds per simulated case-step
    sims = (rng.random((20, n)) < p).astype(float)
    w = cusum_weights(sims, p, 2.0)
    with timer() as t:
        for row in w:
            x, top = 0.0, 0.0
            for wt in row:
                x = max(0.0, x + wt)
                top = max(top, x)
    loop = t() / w.size
    ctx.emit(
        "monitoring",
        "cusum_ns_per_case_step",
        1e9 * vectorised,
        "ns",
        config={**config, "sequences": 2 * n_sim},
        baseline=1e9 * loop,
        higher_is_better=False,
    )
    ctx.emit(
        "monitoring",
        "cusum_s",
        vectorised * 2 * n_sim * n,
        "s",
        config={**config, "sequences": 2 * n_sim},
        higher_is_better=False,
    )

    # the change behind a signal: the profile likelihood over every case, then refined
    with timer() as t:
        change_point(y, p, increase=True)
    ctx.emit("monitoring", "change_point_s", t(), "s", config=config, higher_is_better=False)

    # clinfuse monitor's comparison: 60 months against 10,000 development cases
    mods = ["image", "note", "signal", "tabular"]

    def frame(m: int, shift: float) -> pd.DataFrame:
        logit = rng.normal(-0.8 + shift, 1.0, m)
        out = pd.DataFrame({"logit_fusion": logit, "p_fusion": 1 / (1 + np.exp(-logit))})
        for mod in mods:
            out[f"present_{mod}"] = (rng.random(m) < 0.9).astype(int)
            out[f"p_{mod}"] = 1 / (1 + np.exp(-logit - rng.normal(0, 1, m)))
        return out

    development = frame(10_000, 0.0).assign(split="train")
    scored = frame(n, 0.1).assign(case_id=ids, label=np.where(rng.random(n) < 0.5, y, np.nan))
    with timer() as t:
        monitor_periods(development, scored, dates, mods, period="month")
    ctx.emit(
        "monitoring",
        "monitor_periods_s",
        t(),
        "s",
        config={**config, "periods": 60, "modalities": 4, "development": 10_000},
        higher_is_better=False,
    )
