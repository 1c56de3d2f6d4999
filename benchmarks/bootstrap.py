"""Evaluation: seeded percentile bootstrap, 2,000 replicates on 100,000 cases.

clinfuse counts how often each case is drawn and evaluates every replicate over one fixed
sort (``bootstrap_ci(method="counts")``, the default); the baseline resamples and re-ranks
every replicate (``method="resample"``), measured in the same process on a smaller cohort
(per case-replicate ratio, and same-size ratio).
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import Context, timer


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y - 1.5)))
    return y, p


def run(ctx: Context) -> None:
    from clinfuse.evaluation.metrics import auprc_batch, auroc_batch, bootstrap_ci, brier_batch

    n, reps = (10_000, 200) if ctx.quick else (100_000, 2000)
    base_n, base_reps = (2_000, 50) if ctx.quick else (10_000, 200)
    y, p = _data(n)
    yb, pb = _data(base_n, seed=1)
    for metric in (auroc_batch, auprc_batch, brier_batch):
        name = metric.__name__.removesuffix("_batch")
        with timer() as t:
            bootstrap_ci(y, p, metric, n_boot=reps, seed=0)
        fast = t()
        with timer() as t:
            bootstrap_ci(yb, pb, metric, n_boot=base_reps, seed=0, method="resample")
        slow = t()
        with timer() as t:
            bootstrap_ci(yb, pb, metric, n_boot=base_reps, seed=0, method="counts")
        fast_small = t()
        config = {"metric": name, "n_cases": n, "replicates": reps}
        ctx.emit("bootstrap", "seconds", fast, "s", config=config, higher_is_better=False)
        per_fast = fast / (n * reps)
        per_slow = slow / (base_n * base_reps)
        ctx.emit(
            "bootstrap",
            "ns_per_case_replicate",
            1e9 * per_fast,
            "ns",
            config={**config, "baseline_method": f"resample, n={base_n}, replicates={base_reps}"},
            baseline=1e9 * per_slow,
            higher_is_better=False,
            same_size_speedup=round(slow / fast_small, 2),
        )
