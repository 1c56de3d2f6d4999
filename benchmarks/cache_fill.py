"""Embedding cache: notes/s, images/s, signals/s to fill it; cached fusion-head training.

Fill: the cases of a synthetic cohort (real files, loaded by clinfuse's CaseLoader) are
embedded by frozen encoders through :func:`clinfuse.training.embed.attach_embeddings`
(bf16 autocast on CUDA), cold (computing and writing every entry) and warm (reading
them back). Cases are replicated under new ids to reach a measurable count.

Cached head training: N cases' embeddings in the cache (100,000 on GPU) are packed into
memory-mapped matrices and the late-fusion heads train on batches streamed from them.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks import seed_baseline
from benchmarks._common import Context, log, sync


def sizes(ctx: Context) -> dict[str, Any]:
    if ctx.quick:
        return {
            "n_cases": 16,
            "replicas": 4,
            "image_size": 64,
            "tokens": 64,
            "signal_fs": 100,
            "n_leads": 2,
            "batch": 16,
            "image_encoder": {"name": "small_cnn", "embed_dim": 64},
            "bert": seed_baseline.sizes(ctx)["bert"],
            "head_cases": 2_000,
        }
    return {
        "n_cases": 512,
        "replicas": 8,
        "image_size": 224,
        "tokens": 256,
        "signal_fs": 500,
        "n_leads": 12,
        "batch": 256,
        "image_encoder": {"name": "resnet50", "embed_dim": 128},
        "bert": {},
        "head_cases": 100_000,
    }


def _model_and_cases(ctx: Context, s: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.config import RunConfig
    from clinfuse.data import CaseLoader
    from clinfuse.model import FusionModel

    manifest = seed_baseline.cohort(ctx, s)
    bert = seed_baseline.text_model_folder(ctx, s["bert"])
    cfg = RunConfig.model_validate(
        {
            "data": {
                "modalities": ["image", "note", "signal"],
                "image": {"spatial_size": [s["image_size"]] * 2, "window": "ct_soft_tissue"},
                "signal": {"target_fs": float(s["signal_fs"]), "duration_s": 10.0},
            },
            "encoders": {
                "image": {**s["image_encoder"], "freeze": True},
                "note": {
                    "name": "transformer",
                    "freeze": True,
                    "model_name_or_path": str(bert),
                    "max_length": s["tokens"],
                },
                "signal": {"name": "resnet1d", "embed_dim": 64, "freeze": True},
            },
            "training": {"device": ctx.device, "embed_batch_size": s["batch"]},
        }
    )
    rows = Cohort.from_manifest(manifest, target="label").rows
    loaded = CaseLoader(cfg.data, cfg.data.modalities or []).load_many(rows).cases
    cases = []
    for r in range(s["replicas"]):
        for c in loaded:
            sources = {m: f"{v}#replica{r}" for m, v in c["sources"].items()}
            cases.append({**c, "case_id": f"{c['case_id']}-r{r}", "sources": sources})
    torch.manual_seed(0)
    model = FusionModel.build(
        cfg,
        ["image", "note", "signal"],
        in_shapes={"image_channels": 1, "signal_leads": int(loaded[0]["signal"].shape[0])},
    )
    model.network.to(ctx.device)
    return model, cases


def run(ctx: Context) -> None:
    from benchmarks import _cached
    from clinfuse.cache import EmbeddingCache
    from clinfuse.training.embed import attach_embeddings, cache_for, embed_precision

    s = sizes(ctx)
    model, cases = _model_and_cases(ctx, s)
    unit = {"note": "notes/s", "image": "images/s", "signal": "signals/s"}
    for m in ("note", "image", "signal"):
        device = next(model.network.encoders[m].parameters()).device
        precision = embed_precision(model, device)
        store: EmbeddingCache = cache_for(
            model, m, str(ctx.workdir / f"fill-{m}"), precision=precision
        )
        attach_embeddings(model, cases[: s["batch"]], [m], cache={m: store})  # warm-up
        sync(ctx.device)
        times = {}
        for state in ("cold", "warm"):
            t0 = time.perf_counter()
            attach_embeddings(model, cases, [m], cache={m: store})
            sync(ctx.device)
            times[state] = time.perf_counter() - t0
        config = {
            "modality": m,
            "n_items": len(cases),
            "batch": s["batch"],
            "precision": precision,
            "encoder": model.config.encoders[m]["name"],
            "input": {
                "note": f"{s['tokens']} tokens",
                "image": f"{s['image_size']}²",
                "signal": f"{s['n_leads']} leads x {s['signal_fs'] * 10} samples",
            }[m],
        }
        if m == "note":
            config["bert"] = s["bert"] or "bert-base"
        ctx.emit(
            "cache_fill",
            f"{m}_fill_per_s",
            len(cases) / times["cold"],
            unit[m],
            config=config,
            read_back_per_s=round(len(cases) / times["warm"], 1),
        )

    n = s["head_cases"]
    log(f"cached fusion-head training on {n} cases")
    root = ctx.workdir / "head"
    filled = _cached.fill(root / "cache", n)
    packs, pack_s = _cached.pack(filled, root / "packs")
    res = _cached.train_and_explain(packs, filled, ctx.device)
    config = {"n_cases": n, "epochs": 1, "batch_size": 2048, "dims": _cached.DIMS}
    ctx.emit(
        "cache_fill",
        "cached_head_training_cases_per_s",
        n / res["train_s"],
        "cases/s",
        config=config,
        pack_s=round(pack_s, 2),
        fill_s=round(filled["fill_s"], 2),
        final_loss=round(res["loss"], 4),
    )
