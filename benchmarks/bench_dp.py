"""DP-SGD step time vs a non-private step on the same model and batch (JSON lines).

    python benchmarks/bench_dp.py [--device cpu|cuda] [--batch 32] [--steps 20]

One line per model: ``machine``, ``device``, ``config``, ``non_private_ms``, ``private_ms``
(Opacus per-sample gradients, flat clipping, Gaussian noise; Poisson sampling is not timed)
and ``ratio`` (target ≤ 2).
"""

# ruff: noqa: B023  (the step closures run inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn


def _models() -> dict[str, nn.Module]:
    return {
        # the shape of clinfuse's demo signal encoder: 3 conv blocks with GroupNorm, 1000 samples
        "conv1d_groupnorm": nn.Sequential(
            nn.Conv1d(2, 16, 7, stride=2, padding=3),
            nn.GroupNorm(8, 16),
            nn.ReLU(),
            nn.Conv1d(16, 32, 7, stride=2, padding=3),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.Conv1d(32, 64, 7, stride=2, padding=3),
            nn.GroupNorm(8, 64),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(64, 1),
        ),
        # tabular MLP + head
        "mlp": nn.Sequential(
            nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
        ),
    }


def _inputs(name: str, batch: int) -> torch.Tensor:
    return torch.randn(batch, 2, 1000) if name.startswith("conv") else torch.randn(batch, 32)


def _time(step, steps: int, device: torch.device) -> float:
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from torch.utils.data import DataLoader, TensorDataset

    from privacy.dp import DPConfig, make_private

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    for name, base in _models().items():
        torch.manual_seed(0)
        x = _inputs(name, args.batch).to(device)
        y = (torch.rand(args.batch) < 0.5).float().to(device)
        loss_fn = nn.BCEWithLogitsLoss()

        plain = _models()[name].to(device)
        plain.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(plain.parameters(), lr=0.01)

        def plain_step() -> None:
            opt.zero_grad()
            loss_fn(plain(x).squeeze(-1), y).backward()
            opt.step()

        priv_model = base.to(device)
        loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=args.batch)
        cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
        private = make_private(
            priv_model, torch.optim.SGD(priv_model.parameters(), lr=0.01), loader, cfg
        )

        def private_step() -> None:
            private.optimizer.zero_grad()
            loss_fn(private.module(x).squeeze(-1), y).backward()
            private.optimizer.step()

        t_plain = _time(plain_step, args.steps, device)
        t_priv = _time(private_step, args.steps, device)
        print(
            json.dumps(
                {
                    "bench": "dp_step",
                    "machine": machine,
                    "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "config": {
                        "model": name,
                        "batch": args.batch,
                        "steps": args.steps,
                        "grad_sample_mode": "hooks",
                        "clipping": "flat",
                    },
                    "non_private_ms": round(t_plain, 3),
                    "private_ms": round(t_priv, 3),
                    "ratio": round(t_priv / t_plain, 3),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
