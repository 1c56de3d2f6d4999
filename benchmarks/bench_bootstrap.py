"""Seeded percentile bootstrap: counting cells over one fixed sort vs re-ranking every replicate.

Prints one JSON line per metric: machine, n, replicates, seconds of the counting path
(``bootstrap_ci(method="counts")``, the default) and its speed-up over explicit resampling
with a per-replicate sort (``method="resample"``, the previous implementation) measured in
the same process on a smaller ``n`` (per-case-replicate time ratio).

    python benchmarks/bench_bootstrap.py                     # 2,000 × 100,000
    python benchmarks/bench_bootstrap.py --n 20000 --baseline-n 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from clinfuse.evaluation.metrics import auprc_batch, auroc_batch, bootstrap_ci, brier_batch


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y - 1.5)))
    return y, p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument("--baseline-n", type=int, default=10_000)
    ap.add_argument("--baseline-replicates", type=int, default=200)
    args = ap.parse_args()
    y, p = _data(args.n)
    yb, pb = _data(args.baseline_n, seed=1)
    for metric in (auroc_batch, auprc_batch, brier_batch):
        t0 = time.perf_counter()
        bootstrap_ci(y, p, metric, n_boot=args.replicates, seed=0)
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        bootstrap_ci(yb, pb, metric, n_boot=args.baseline_replicates, seed=0, method="resample")
        slow = time.perf_counter() - t0
        t0 = time.perf_counter()
        bootstrap_ci(yb, pb, metric, n_boot=args.baseline_replicates, seed=0, method="counts")
        fast_small = time.perf_counter() - t0
        per_fast = fast / (args.n * args.replicates)
        per_slow = slow / (args.baseline_n * args.baseline_replicates)
        print(
            json.dumps(
                {
                    "benchmark": "bootstrap_ci",
                    "machine": platform.node() or platform.machine(),
                    "cpu_count": os.cpu_count(),
                    "metric": metric.__name__.removesuffix("_batch"),
                    "n": args.n,
                    "replicates": args.replicates,
                    "seconds": round(fast, 3),
                    "baseline": {
                        "method": "resample (per-replicate ranking)",
                        "n": args.baseline_n,
                        "replicates": args.baseline_replicates,
                        "seconds": round(slow, 3),
                        "counts_seconds_same_size": round(fast_small, 3),
                    },
                    "speedup_same_size": round(slow / fast_small, 1),
                    "speedup_per_case_replicate": round(per_slow / per_fast, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
