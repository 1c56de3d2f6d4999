"""Deployment checks on 100,000 cases: dates read, metrics per month with the calibration
drift, class-conditional conformal sets (fit and predict), their coverage per site, and the
heterogeneity tests across sites — the analyses `clinfuse evaluate --time-column
--conformal --subgroups` adds. No baseline: each figure is the time of one call.
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import Context, timer


def run(ctx: Context) -> None:
    from clinfuse.evaluation.conformal import ConformalSets, coverage_by_group
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
