"""Frozen-encoder mode: compute each case's embedding once, cache it, reuse it.

The embeddings are keyed by case, modality, encoder fingerprint and the
input's identity (see :mod:`clinfuse.cache`), so a second run with the same
encoder on the same files reads them from disk instead of running the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clinfuse.cache import EmbeddingCache, default_cache_dir
from clinfuse.model import Collator, move_batch

__all__ = ["attach_embeddings", "cache_for"]


def cache_for(model: Any, modality: str, cache_dir: str | None = None) -> EmbeddingCache:
    """The embedding cache of ``model``'s encoder for ``modality``."""
    root = cache_dir or model.config.training.cache_dir or default_cache_dir()
    encoder = model.network.encoders[modality]
    prep: Any = None
    if modality == "image":
        prep = model.config.data.image.model_dump(mode="json")
    elif modality == "signal":
        prep = model.config.data.signal.model_dump(mode="json")
    elif modality == "tabular" and model.tabular is not None:
        prep = model.tabular.to_dict()
    return EmbeddingCache(root, modality, encoder.fingerprint(), prep)


@torch.no_grad()
def attach_embeddings(
    model: Any,
    cases: Sequence[dict[str, Any]],
    modalities: Sequence[str],
    *,
    cache: dict[str, EmbeddingCache] | None = None,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Return copies of ``cases`` with ``f"{m}_embedding"`` (D,) float32 for each frozen modality.

    Embeddings already attached are kept; the rest come from the cache or are
    computed in batches (and stored in the cache).
    """
    batch_size = batch_size or model.config.training.embed_batch_size
    out = [dict(c) for c in cases]
    for i, m in enumerate(model.modalities):
        if m not in modalities:
            continue
        if all(not c["present"][i] or c.get(f"{m}_embedding") is not None for c in out):
            continue  # nothing to compute: skip hashing the encoder for the cache key
        encoder = model.network.encoders[m]
        store = (cache or {}).get(m) or cache_for(model, m)
        todo: list[int] = []
        keys: dict[int, str] = {}
        for k, c in enumerate(out):
            if not c["present"][i] or c.get(f"{m}_embedding") is not None:
                continue
            source = c.get("sources", {}).get(m)
            if source is not None:  # cases built by hand may lack it: computed, not cached
                keys[k] = store.key(c["case_id"], source)
                hit = store.get(keys[k])
                if hit is not None:
                    c[f"{m}_embedding"] = hit
                    continue
            todo.append(k)
        if m == "note":
            # batches of similar length waste less compute on padding
            todo.sort(key=lambda k: len(out[k]["note"]))
        was_training = encoder.training
        encoder.eval()
        device = next(encoder.parameters()).device
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            inputs = encoder.collate([Collator.item(out[k], m) for k in idx])
            emb = encoder(move_batch({"x": inputs}, device)["x"]).float().cpu().numpy()
            for row, k in enumerate(idx):
                vec = np.ascontiguousarray(emb[row], dtype=np.float32)
                out[k][f"{m}_embedding"] = vec
                if k in keys:
                    store.put(keys[k], vec)
        encoder.train(was_training)
    return out
