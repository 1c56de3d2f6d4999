"""Explanation: modality Shapley values per case from the cache; one full case explanation.

1. modality Shapley values (shap ``ExactExplainer``, modalities as players) from the
   modality cache (embeddings computed once): ms per case; the first call includes shap's
   numba JIT and is reported on the same line;
2. one full case explanation (modality Shapley + note tokens + image heat map + ECG
   segments + labs, with figures): seconds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks._common import Context
from benchmarks._runs import small_run


def run(ctx: Context) -> None:
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.explain.modality import build_modality_cache, modality_shapley
    from clinfuse.explain.report import explain_case
    from clinfuse.model import load_run

    run_dir, manifest = small_run(ctx)
    model = load_run(run_dir, device=ctx.device)
    rows = Cohort.from_manifest(manifest, target="label").rows
    cases = CaseLoader(model.config.data, model.modalities, model.tabular).load_many(rows).cases

    t0 = time.perf_counter()
    cache = build_modality_cache(model, cases)
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    modality_shapley(model, cache)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    exp = modality_shapley(model, cache)
    t_warm = time.perf_counter() - t0
    ctx.emit(
        "explain",
        "modality_shapley_ms_per_case",
        1000 * t_warm / len(cache),
        "ms",
        config={"n_cases": len(cache), "n_modalities": len(cache.modalities)},
        higher_is_better=False,
        first_call_incl_jit_ms_per_case=round(1000 * t_first / len(cache), 3),
        cache_build_s=round(t_cache, 3),
    )

    note_max_evals = 64
    i = next(k for k, c in enumerate(cases) if c["present"].all())
    bg = np.stack([c["image"] for c in cases if c.get("image") is not None][:16])
    t0 = time.perf_counter()
    explain_case(
        model,
        cases[i],
        base_value=float(exp.base_values[i]),
        phi={m: float(exp.values[i, j]) for j, m in enumerate(cache.modalities)},
        out_dir=ctx.workdir / "case-explanation",
        image_background=bg,
        note_max_evals=note_max_evals,
    )
    t_case = time.perf_counter() - t0
    note_encoder: Any = model.network.encoders["note"]
    tokenizer = note_encoder.tokenizer
    ctx.emit(
        "explain",
        "full_case_explanation_s",
        t_case,
        "s",
        config={
            "note_tokens": len(tokenizer(cases[i]["note"])["input_ids"]),
            "note_max_evals": note_max_evals,
            "image_size": list(model.config.data.image.spatial_size),
        },
        higher_is_better=False,
    )
