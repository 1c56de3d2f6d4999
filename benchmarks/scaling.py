"""Scaling of the cached path with cohort size: time and memory at 1k, 10k, 100k cases.

The embedding cache is filled once for the largest cohort (one entry per case and
modality, as frozen encoders leave it); then, for each size N, a fresh process packs the
first N cases into memory-mapped matrices, trains the late-fusion heads for one epoch on
batches streamed from them, and computes the coalition values (input of the exact
modality Shapley values) chunk by chunk. Each size reports seconds per stage and the
process's peak memory: time should grow linearly in N, memory should stay flat.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import Context, log, peak_rss_mib, rss_anon_mib


def sizes(ctx: Context) -> list[int]:
    return [250, 1000, 4000] if ctx.quick else [1_000, 10_000, 100_000]


def _child(root: Path, n: int, device: str, out: Path) -> None:
    """One size, in its own process (so its peak memory is its own)."""
    import torch

    from benchmarks import _cached

    torch.set_num_threads(max(1, torch.get_num_threads()))
    meta = np.load(root / "meta.npz", allow_pickle=False)
    keys = {m: [None if k == "" else str(k) for k in meta[f"keys_{m}"][:n]] for m in _cached.DIMS}
    filled = {
        "labels": meta["labels"][:n],
        "present": meta["present"][:n],
        "keys": keys,
        "root": root / "cache",
    }
    anon_before = rss_anon_mib()
    packs, pack_s = _cached.pack(filled, root / f"packs-{n}")
    res = _cached.train_and_explain(packs, filled, device)
    out.write_text(
        json.dumps(
            {
                "pack_s": pack_s,
                **res,
                "peak_rss_mib": peak_rss_mib(),
                "rss_anon_before_mib": anon_before,
                "rss_anon_after_mib": rss_anon_mib(),
                "packed_mib": sum(p.matrix.nbytes for p in packs.values()) / 2**20,
            }
        )
    )


def run(ctx: Context) -> None:
    from benchmarks import _cached

    ns = sizes(ctx)
    root = ctx.workdir / "scaling"
    log(f"filling the embedding cache for {ns[-1]} cases x {len(_cached.DIMS)} modalities")
    filled = _cached.fill(root / "cache", ns[-1])
    arrays: dict[str, Any] = {"labels": filled["labels"], "present": filled["present"]}
    for m, ks in filled["keys"].items():
        arrays[f"keys_{m}"] = np.array([k or "" for k in ks])
    np.savez(root / "meta.npz", **arrays)
    entries = int(filled["present"].sum())
    ctx.emit(
        "scaling",
        "cache_fill_entries_per_s",
        entries / filled["fill_s"],
        "entries/s",
        config={"n_cases": ns[-1], "entries": entries, "dims": _cached.DIMS},
        note="one .npy file per case and modality; bound by file creation on this disk",
    )
    first = None
    for n in ns:
        out = root / f"result-{n}.json"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "benchmarks.scaling", str(root), str(n), ctx.device, str(out)],
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        wall = time.perf_counter() - t0
        r = json.loads(out.read_text())
        r["wall_s"] = wall
        first = first or (n, r)
        n0, r0 = first
        config = {"n_cases": n, "epochs": 1, "batch_size": 2048, "dims": _cached.DIMS}
        for stage in ("pack_s", "train_s", "coalitions_s"):
            # ratio = how much better than linear growth from the smallest size (1 = linear)
            ctx.emit(
                "scaling",
                stage.removesuffix("_s") + "_us_per_case",
                1e6 * r[stage] / n,
                "us/case",
                config=config,
                baseline=1e6 * r0[stage] / n0,
                higher_is_better=False,
                baseline_is=f"the same stage at n={n0}",
            )
        ctx.emit(
            "scaling",
            "peak_rss_mib",
            r["peak_rss_mib"],
            "MiB",
            config=config,
            baseline=r0["peak_rss_mib"],
            higher_is_better=False,
            baseline_is=f"peak RSS at n={n0}",
            rss_anon_after_mib=r["rss_anon_after_mib"],
            packed_mib=round(r["packed_mib"], 1),
        )


if __name__ == "__main__":
    _child(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
