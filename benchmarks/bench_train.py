"""Training-step throughput of the clinfuse fusion network, fp32 vs bf16 autocast.

Prints one JSON line per configuration: machine, device, configuration, samples/s and the
ratio to the fp32 step measured in the same process. Synthetic tensors of the shapes the
pipeline produces (no data loading: see ``bench_end_to_end`` for files → model).

    python benchmarks/bench_train.py                      # CPU, small shapes
    python benchmarks/bench_train.py --device cuda        # GPU shapes: DenseNet121 224², 12-lead 500 Hz ECG
    python benchmarks/bench_train.py --device cuda --text-model PATH   # also fine-tune a BERT on 256 tokens
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch

from clinfuse.config import RunConfig
from clinfuse.model import FusionModel, move_batch


def _config(args: argparse.Namespace) -> RunConfig:
    encoders: dict[str, Any] = {
        "image": {"name": args.image_encoder, "embed_dim": 128},
        "signal": {"name": "resnet1d", "embed_dim": 128, "width": 64, "depth": 6},
        "tabular": {"name": "mlp", "embed_dim": 32},
        "note": {"name": "transformer", "freeze": args.text_model is None},
    }
    if args.text_model:
        encoders["note"]["model_name_or_path"] = args.text_model
    return RunConfig.model_validate(
        {
            "data": {"tabular_columns": [f"x{i}" for i in range(args.tab_features)]},
            "encoders": encoders,
            "fusion": {"strategy": args.fusion},
            "training": {"batch_size": args.batch_size, "device": args.device},
        }
    )


def _batch(args: argparse.Namespace, model: FusionModel, g: torch.Generator) -> dict[str, Any]:
    b = args.batch_size
    rows = torch.arange(b)
    size = (args.image_size, args.image_size)
    batch: dict[str, Any] = {
        "present": torch.ones(b, 4, dtype=torch.bool),
        "label": (torch.rand(b, generator=g) < 0.3).float(),
        "embeddings": {},
        "inputs": {
            "image": (rows, torch.randn(b, 1, *size, generator=g)),
            "signal": (rows, torch.randn(b, args.leads, args.signal_len, generator=g)),
            "tabular": (
                rows,
                {
                    "values": torch.randn(b, args.tab_features, generator=g),
                    "mask": torch.ones(b, args.tab_features),
                },
            ),
        },
    }
    if args.text_model:
        enc = model.network.encoders["note"]
        words = " ".join(["patient reports dyspnea and productive cough"] * 40)
        batch["inputs"]["note"] = (rows, enc.collate([words] * b))  # type: ignore[operator]
    else:
        batch["embeddings"]["note"] = torch.randn(
            b, model.network.fusion.embed_dims["note"], generator=g
        )
    return batch


def _bench(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    import torch.nn.functional as F

    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = _config(args)
    if args.text_model is None:
        # a frozen note encoder: its embeddings come from the cache, the BERT is not in the step
        cfg.encoders["note"] = {
            "name": "transformer",
            "freeze": True,
            "model_name_or_path": args.frozen_text_model,
        }
    model = FusionModel.build(
        cfg,
        ["image", "note", "signal", "tabular"],
        in_shapes={
            "image_channels": 1,
            "signal_leads": args.leads,
            "tabular_features": args.tab_features,
        },
    )
    net = model.network.to(device).train()
    if args.channels_last and device.type == "cuda":
        net.encoders["image"].to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = move_batch(_batch(args, model, g), device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def step() -> None:
        with autocast:
            out = net(batch)
            loss = F.binary_cross_entropy_with_logits(
                out.unimodal.float(), batch["label"][:, None].expand(-1, 4)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "benchmark": "train_step",
        "precision": precision,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() / 2**30)
        if device.type == "cuda"
        else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image-encoder", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--leads", type=int, default=12)
    p.add_argument("--signal-len", type=int, default=None)
    p.add_argument("--tab-features", type=int, default=20)
    p.add_argument("--fusion", default="late")
    p.add_argument(
        "--text-model", default=None, help="a local BERT folder to fine-tune in the step"
    )
    p.add_argument(
        "--frozen-text-model", default=None, help="note model for the frozen path (default MiniLM)"
    )
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.image_encoder = args.image_encoder or ("densenet121" if gpu else "small_cnn")
    args.image_size = args.image_size or (224 if gpu else 64)
    args.batch_size = args.batch_size or (64 if gpu else 16)
    args.signal_len = args.signal_len or (5000 if gpu else 1000)
    args.steps = args.steps or (20 if gpu else 5)
    machine = {
        "machine": platform.node(),
        "device": torch.cuda.get_device_name(0)
        if gpu
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }
    conf = {
        k: getattr(args, k)
        for k in (
            "image_encoder",
            "image_size",
            "batch_size",
            "leads",
            "signal_len",
            "fusion",
            "steps",
        )
    }
    conf["text"] = "fine-tuned" if args.text_model else "frozen (cached embeddings)"
    base = _bench(args, "32-true")
    print(json.dumps({**machine, **conf, **base, "ratio_to_fp32": 1.0}), flush=True)
    if gpu:
        fast = _bench(args, "bf16-mixed")
        print(
            json.dumps(
                {
                    **machine,
                    **conf,
                    **fast,
                    "ratio_to_fp32": fast["samples_per_s"] / base["samples_per_s"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
