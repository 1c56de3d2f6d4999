"""The cached path at cohort scale, shared by ``cache_fill`` and ``scaling``.

Embeddings are written into a real :class:`clinfuse.cache.EmbeddingCache` (one entry per
case and modality, as the frozen encoders leave them), packed into memory-mapped matrices
(:meth:`EmbeddingCache.pack`), and a late-fusion head is trained on batches streamed from
them (:func:`clinfuse.training.embed.fit_heads_on_packed`); modality Shapley values are then
computed chunk by chunk (:func:`clinfuse.explain.modality.coalition_values`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DIMS = {"image": 128, "note": 384, "signal": 64, "tabular": 32}


def fill(root: Path, n: int, seed: int = 0, chunk: int = 8192) -> dict[str, Any]:
    """Write ``n`` cases' embeddings (about 80 % present per modality) into the cache."""
    from clinfuse.cache import EmbeddingCache

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float32)
    present = rng.random((n, len(DIMS))) < 0.8
    present[np.arange(n), rng.integers(0, len(DIMS), n)] = True
    keys: dict[str, list[str | None]] = {}
    t0 = time.perf_counter()
    for j, (m, d) in enumerate(DIMS.items()):
        store = EmbeddingCache(root, m, f"bench-{m}-{d}".ljust(64, "0"))
        keys[m] = []
        direction = rng.normal(size=d).astype(np.float32) / np.sqrt(d)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            block = rng.normal(size=(stop - start, d)).astype(np.float32)
            block += 2.0 * (y[start:stop, None] - 0.3) * direction  # some signal to learn
            for i in range(start, stop):
                if present[i, j]:
                    key = store.key(f"c{i:07d}", f"bench:{i}")
                    store.put(key, block[i - start])
                    keys[m].append(key)
                else:
                    keys[m].append(None)
    return {
        "labels": y,
        "present": present,
        "keys": keys,
        "root": root,
        "fill_s": time.perf_counter() - t0,
    }


def pack(filled: dict[str, Any], out: Path) -> tuple[dict[str, Any], float]:
    """Pack every modality's entries into one memory-mapped matrix; returns (packs, seconds)."""
    from clinfuse.cache import EmbeddingCache

    t0 = time.perf_counter()
    packs = {}
    for m, d in DIMS.items():
        store = EmbeddingCache(filled["root"], m, f"bench-{m}-{d}".ljust(64, "0"))
        packs[m], found = store.pack(filled["keys"][m], out / f"{m}.npy")
        if not np.array_equal(found, filled["present"][:, list(DIMS).index(m)]):
            raise RuntimeError(f"pack of {m}: entries missing from the cache")
    return packs, time.perf_counter() - t0


def network(device: str) -> Any:
    """A late-fusion network over the four modalities (encoders unused: cached path)."""
    from clinfuse.fusion.base import FusionConfig, build_fusion
    from clinfuse.model import FusionNetwork

    torch.manual_seed(0)
    fusion = build_fusion(FusionConfig.model_validate({}), list(DIMS), dict(DIMS))
    return FusionNetwork(list(DIMS), {}, fusion).to(device)


def train_and_explain(
    packs: dict[str, Any],
    filled: dict[str, Any],
    device: str,
    *,
    epochs: int = 1,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Stream-train the heads, then the coalition values of every case by chunk; seconds each."""
    from clinfuse.explain.modality import ModalityCache, coalition_values
    from clinfuse.training.embed import fit_heads_on_packed

    net = network(device)
    present, y = filled["present"], filled["labels"]
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = fit_heads_on_packed(
        net, packs, present, y, epochs=epochs, batch_size=batch_size, device=device
    )
    if device == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0

    # coalition values (the input of exact modality Shapley values), streamed by chunk
    t0 = time.perf_counter()
    net.to("cpu")
    checksum = 0.0
    for start in range(0, len(y), 8192):
        stop = min(start + 8192, len(y))
        cache = ModalityCache(
            case_ids=[str(i) for i in range(start, stop)],
            modalities=list(DIMS),
            embeddings={m: packs[m][start:stop] for m in DIMS},
            present=present[start:stop],
        )
        checksum += float(coalition_values(net, cache)[:, -1].sum())
    return {
        "train_s": train_s,
        "coalitions_s": time.perf_counter() - t0,
        "loss": losses[-1],
        "checksum": checksum,
    }
