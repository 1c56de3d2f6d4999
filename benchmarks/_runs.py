"""A small trained run shared by the ``inference`` and ``explain`` benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._common import Context, log, note_encoder_override


def small_config(device: str, epochs: int = 3) -> Any:
    """CPU-sized encoders (the demo's), 64² images, 10-s ECGs at 100 Hz, tabular labs."""
    from clinfuse.config import RunConfig
    from clinfuse.synth import TABULAR_COLUMNS

    return RunConfig.model_validate(
        {
            "data": {
                "tabular_columns": list(TABULAR_COLUMNS),
                "image": {"spatial_size": [64, 64], "window": "ct_soft_tissue"},
                "signal": {"target_fs": 100.0, "duration_s": 10.0},
            },
            "encoders": {
                "image": {"name": "small_cnn", "embed_dim": 16, "width": 8, "global_pool": "max"},
                "signal": {"name": "resnet1d", "embed_dim": 16, "width": 8, "depth": 2},
                "tabular": {"name": "mlp", "embed_dim": 8, "hidden": [16]},
                **note_encoder_override(),
            },
            "training": {"epochs": epochs, "batch_size": 16, "device": device},
        }
    )


def small_run(ctx: Context) -> tuple[Path, Path]:
    """``(run folder, training manifest)``, trained once per invocation."""

    def make() -> tuple[Path, Path]:
        from clinfuse.synth import synthesize_cohort
        from clinfuse.training import train_run

        n = 80 if ctx.quick else 400
        log(f"training a small run on {n} synthetic cases")
        manifest = synthesize_cohort(ctx.workdir / f"run-cohort-{n}", n_cases=n, seed=0)
        run = train_run(manifest, ctx.workdir / "small-run", small_config(ctx.device))
        return run, manifest

    return ctx.shared("small-run", make)  # type: ignore[no-any-return]


def new_cohort(ctx: Context, n: int, seed: int = 1) -> Path:
    """Cases the run has never seen (another seed): their embeddings are not cached."""

    def make() -> Path:
        from clinfuse.synth import synthesize_cohort

        return synthesize_cohort(ctx.workdir / f"new-cohort-{n}-{seed}", n_cases=n, seed=seed)

    return ctx.shared(f"new-cohort-{n}-{seed}", make)  # type: ignore[no-any-return]
