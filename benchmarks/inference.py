"""Inference: one case end to end (files → fused risk) and cohort throughput of ``predict``.

A small run (demo-sized encoders, frozen MiniLM notes) is trained once; then:

- latency: ``FusionModel.predict`` on a one-row manifest of a case it has never seen
  (DICOM read, note embedded by MiniLM, ECG filtered, tabular encoded, fused, calibrated),
  median over several such cases;
- throughput: ``predict`` on a new cohort, first with an empty embedding cache, then again
  (note embeddings read from the cache).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pandas as pd

from benchmarks._common import Context, sync
from benchmarks._runs import new_cohort, small_run


def run(ctx: Context) -> None:
    from clinfuse.model import load_run

    run_dir, _ = small_run(ctx)
    model = load_run(run_dir, device=ctx.device)
    n = 40 if ctx.quick else 400
    manifest = new_cohort(ctx, n)
    k = 5 if ctx.quick else 20
    singles = new_cohort(ctx, max(k + 1, 60), seed=2)  # other new cases, one at a time
    frame = pd.read_csv(singles)
    one_rows = []
    for i in range(k + 1):
        path = singles.parent / f"one_{i}.csv"
        frame.iloc[[i]].to_csv(path, index=False)
        one_rows.append(path)
    model.predict(one_rows[0])  # warm-up: imports, MiniLM load, allocator
    latencies = []
    for path in one_rows[1:]:
        sync(ctx.device)
        t0 = time.perf_counter()
        out = model.predict(path)
        sync(ctx.device)
        latencies.append(time.perf_counter() - t0)
        assert len(out) == 1 and out["p_fusion"].between(0, 1).all()
    config = {"encoders": "demo-sized, MiniLM notes frozen", "cases": k}
    ctx.emit(
        "inference",
        "one_case_latency_ms",
        1000 * statistics.median(latencies),
        "ms",
        config=config,
        higher_is_better=False,
        p90_ms=round(1000 * sorted(latencies)[int(0.9 * (k - 1))], 2),
        note="a case new to the embedding cache (MiniLM runs on its note)",
    )
    # the note encoder's fingerprint keys its embedding cache; it is remembered until a
    # weight changes (baseline: hashing every weight on each call, as before)
    note: Any = model.network.encoders["note"]
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        note.__dict__.pop("_fingerprint_memo", None)
        note.fingerprint()
    full = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        note.fingerprint()
    memo = (time.perf_counter() - t0) / reps
    ctx.emit(
        "inference",
        "note_encoder_fingerprint_ms",
        1000 * memo,
        "ms",
        config={"encoder": str(model.config.encoders["note"].get("model_name_or_path"))},
        baseline=1000 * full,
        higher_is_better=False,
        baseline_is="hashing every weight on each call",
    )
    times = {}
    for state in ("cold cache", "warm cache"):
        t0 = time.perf_counter()
        out = model.predict(manifest)
        sync(ctx.device)
        times[state] = time.perf_counter() - t0
    ctx.emit(
        "inference",
        "cohort_predict_cases_per_s",
        len(out) / times["cold cache"],
        "cases/s",
        config={**config, "cases": len(out)},
        warm_cache_cases_per_s=round(len(out) / times["warm cache"], 1),
    )
