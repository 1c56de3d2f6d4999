"""Training-step throughput of the clinfuse fusion network on synthetic tensors (no loading).

The network: image + signal + tabular encoders trained, note from cached (frozen)
embeddings; late fusion. Each variant adds one of clinfuse's GPU settings and is compared
with the fp32 step measured in the same process:

- ``fp32``: the baseline (plain AdamW);
- ``bf16``: bf16 autocast (``precision: auto`` on CUDA);
- ``bf16+channels_last``: plus channels-last images (``training.channels_last``);
- ``bf16+channels_last+fused``: plus fused AdamW (``training.fused_optimizer``), the
  CUDA default;
- ``...+compile``: plus ``torch.compile`` of the encoders' backbones
  (``training.compile``, off by default): measured after its warm-up steps, with the
  compile time reported on the same line.

On CPU only ``fp32`` and ``fp32+compile`` run (the others are CUDA features).
Old command: ``python benchmarks/bench_train.py`` runs this benchmark.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks._common import Context, log, sync

VARIANTS_GPU = [
    ("fp32", {}),
    ("bf16", {"bf16": True}),
    ("bf16+channels_last", {"bf16": True, "channels_last": True}),
    ("bf16+channels_last+fused", {"bf16": True, "channels_last": True, "fused": True}),
    (
        "bf16+channels_last+fused+compile",
        {"bf16": True, "channels_last": True, "fused": True, "compile": True},
    ),
]
VARIANTS_CPU = [("fp32", {}), ("fp32+compile", {"compile": True})]


def sizes(ctx: Context) -> dict[str, Any]:
    if ctx.device == "cuda" and not ctx.quick:
        return {
            "image_encoder": "densenet121",
            "image_size": 224,
            "batch_size": 64,
            "leads": 12,
            "signal_len": 5000,
            "steps": 20,
            "warmup": 5,
        }
    return {
        "image_encoder": "small_cnn",
        "image_size": 64,
        "batch_size": 16,
        "leads": 12,
        "signal_len": 1000,
        "steps": 5,
        "warmup": 3,
    }


def _model(s: dict[str, Any]) -> Any:
    from clinfuse.config import RunConfig
    from clinfuse.model import FusionModel

    cfg = RunConfig.model_validate(
        {
            "data": {"tabular_columns": [f"x{i}" for i in range(20)]},
            "encoders": {
                "image": {"name": s["image_encoder"], "embed_dim": 128},
                "signal": {"name": "resnet1d", "embed_dim": 128, "width": 64, "depth": 6},
                "tabular": {"name": "mlp", "embed_dim": 32},
            },
        }
    )
    torch.manual_seed(0)
    return FusionModel.build(
        cfg,
        ["image", "note", "signal", "tabular"],
        in_shapes={"image_channels": 1, "signal_leads": s["leads"], "tabular_features": 20},
    )


def _batch(s: dict[str, Any], note_dim: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    b = s["batch_size"]
    rows = torch.arange(b)
    size = (s["image_size"], s["image_size"])
    return {
        "present": torch.ones(b, 4, dtype=torch.bool),
        "label": (torch.rand(b, generator=g) < 0.3).float(),
        "embeddings": {"note": torch.randn(b, note_dim, generator=g)},
        "inputs": {
            "image": (rows, torch.randn(b, 1, *size, generator=g)),
            "signal": (rows, torch.randn(b, s["leads"], s["signal_len"], generator=g)),
            "tabular": (
                rows,
                {"values": torch.randn(b, 20, generator=g), "mask": torch.ones(b, 20)},
            ),
        },
    }


def _bench(ctx: Context, s: dict[str, Any], opts: dict[str, Any]) -> dict[str, float]:
    from clinfuse.model import move_batch
    from clinfuse.training.trainer import SpeedSettings, make_optimizer, speed_up_encoders

    device = torch.device(ctx.device)
    model = _model(s)
    net = model.network.to(device).train()
    speed = SpeedSettings(
        channels_last=bool(opts.get("channels_last")), compile=bool(opts.get("compile"))
    )
    restore = speed_up_encoders(net, model.frozen_modalities, speed)
    params = [p for p in net.parameters() if p.requires_grad]
    tcfg = model.config.training
    opt = make_optimizer([{"params": params, "lr": 1e-4}], tcfg, fused=bool(opts.get("fused")))
    batch = move_batch(_batch(s, net.fusion.embed_dims["note"]), device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(opts.get("bf16")))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with autocast:
            out = net(batch)
            loss = F.binary_cross_entropy_with_logits(
                out.unimodal.float(), batch["label"][:, None].expand(-1, 4)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        t0 = time.perf_counter()
        for _ in range(s["warmup"]):
            step()
        sync(ctx.device)
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(s["steps"]):
            step()
        sync(ctx.device)
        seconds = time.perf_counter() - t0
    finally:
        restore()
    return {
        "samples_per_s": s["steps"] * s["batch_size"] / seconds,
        "step_ms": 1000 * seconds / s["steps"],
        "warmup_s": warmup_s,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
    }


def run(ctx: Context) -> None:
    s = sizes(ctx)
    variants = VARIANTS_GPU if ctx.device == "cuda" else VARIANTS_CPU
    if os.environ.get("CLINFUSE_BENCH_COMPILE", "1") == "0":
        variants = [(n, o) for n, o in variants if not o.get("compile")]
    base = None
    for name, opts in variants:
        log(f"train_step {name}")
        r = _bench(ctx, s, opts)
        base = base or r["samples_per_s"]
        ctx.emit(
            "train_step",
            "samples_per_s",
            r["samples_per_s"],
            "samples/s",
            config={**s, "variant": name, "note": "frozen (cached embeddings)"},
            baseline=base,
            baseline_is="fp32 step, same process",
            step_ms=round(r["step_ms"], 2),
            warmup_s=round(r["warmup_s"], 2),
            peak_gpu_mem_gib=r["peak_gpu_mem_gib"],
        )
