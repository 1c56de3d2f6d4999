"""Explanation speed on CPU; prints JSON lines.

1. modality Shapley values from the cache (embeddings computed once): ms per case
   (first call includes shap's numba JIT, reported separately);
2. one full case explanation (modality Shapley + note tokens + image heat map +
   ECG segments + labs, with figures): seconds.

    python benchmarks/bench_explain.py [--n-cases 200] [--note-max-evals 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def small_config(**training):
    """CPU-sized encoders for the benchmark cohort (64² images, 4-s ECGs at 50 Hz)."""
    from clinfuse.config import RunConfig
    from clinfuse.synth import TABULAR_COLUMNS

    return RunConfig.model_validate(
        {
            "data": {
                "tabular_columns": list(TABULAR_COLUMNS),
                "image": {"spatial_size": [64, 64], "window": "ct_soft_tissue"},
                "signal": {"target_fs": 50.0, "duration_s": 4.0},
            },
            "encoders": {
                "image": {"name": "small_cnn", "embed_dim": 16, "width": 8, "global_pool": "max"},
                "signal": {"name": "resnet1d", "embed_dim": 16, "width": 8, "depth": 2},
                "tabular": {"name": "mlp", "embed_dim": 8, "hidden": [16]},
            },
            "training": {"epochs": 3, "batch_size": 16, **training},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-cases", type=int, default=200)
    parser.add_argument("--note-max-evals", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import torch

    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.explain.modality import build_modality_cache, modality_shapley
    from clinfuse.explain.report import explain_case
    from clinfuse.model import load_run
    from clinfuse.synth import synthesize_cohort
    from clinfuse.training import train_run

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = synthesize_cohort(
            root / "cohort", n_cases=args.n_cases, seed=0, image_size=64, signal_fs=100
        )
        cfg = small_config(epochs=3)
        cfg = cfg.model_copy(
            update={
                "data": cfg.data.model_copy(
                    update={
                        "image": cfg.data.image.model_copy(update={"spatial_size": (64, 64)}),
                        "signal": cfg.data.signal.model_copy(
                            update={"target_fs": 100.0, "duration_s": 10.0}
                        ),
                    }
                )
            }
        )
        run = train_run(manifest, root / "run", cfg)
        model = load_run(run)
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
        print(
            json.dumps(
                {
                    "benchmark": "modality_shapley_from_cache",
                    "device": "cpu",
                    "torch_threads": torch.get_num_threads(),
                    "n_cases": len(cache),
                    "n_modalities": len(cache.modalities),
                    "ms_per_case": 1000 * t_warm / len(cache),
                    "ms_per_case_first_call_incl_jit": 1000 * t_first / len(cache),
                    "cache_build_s": t_cache,
                }
            ),
            flush=True,
        )

        i = next(k for k, c in enumerate(cases) if c["present"].all())
        bg = np.stack([c["image"] for c in cases if c.get("image") is not None][:16])
        t0 = time.perf_counter()
        explain_case(
            model,
            cases[i],
            base_value=float(exp.base_values[i]),
            phi={m: float(exp.values[i, j]) for j, m in enumerate(cache.modalities)},
            out_dir=root / "case",
            image_background=bg,
            note_max_evals=args.note_max_evals,
        )
        t_case = time.perf_counter() - t0
        n_tokens = len(model.network.encoders["note"].tokenizer(cases[i]["note"])["input_ids"])
        print(
            json.dumps(
                {
                    "benchmark": "full_case_explanation",
                    "device": "cpu",
                    "torch_threads": torch.get_num_threads(),
                    "seconds": t_case,
                    "note_tokens": n_tokens,
                    "note_max_evals": args.note_max_evals,
                    "image_size": list(model.config.data.image.spatial_size),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
