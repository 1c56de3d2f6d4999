"""Frozen-encoder mode: compute each case's embedding once, cache it, reuse it.

The embeddings are keyed by case, modality, encoder fingerprint and the
input's identity (see :mod:`clinfuse.cache`), so a second run with the same
encoder on the same files reads them from disk instead of running the encoder.

At cohort scale the cache is packed into memory-mapped matrices
(:meth:`clinfuse.cache.EmbeddingCache.pack`) and the fusion heads train on batches
streamed from them (:func:`packed_batches`, :func:`fit_heads_on_packed`): time grows
with the cohort, memory does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from clinfuse.cache import EmbeddingCache, PackedEmbeddings, default_cache_dir
from clinfuse.model import Collator, move_batch

__all__ = [
    "attach_embeddings",
    "cache_for",
    "embed_precision",
    "fit_heads_on_packed",
    "packed_batches",
]


def embed_precision(model: Any, device: torch.device) -> str:
    """``bf16-mixed`` when filling the cache on a bf16-capable GPU (unless the run's
    ``training.precision`` says otherwise), else ``32-true``."""
    wanted = model.config.training.precision
    gpu = device.type == "cuda" and wanted in ("auto", "bf16-mixed")
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def cache_for(
    model: Any, modality: str, cache_dir: str | None = None, precision: str = "32-true"
) -> EmbeddingCache:
    """The embedding cache of ``model``'s encoder for ``modality``.

    Embeddings computed under bf16 autocast differ (slightly) from fp32 ones, so the
    precision is part of the key whenever it is not fp32.
    """
    root = cache_dir or model.config.training.cache_dir or default_cache_dir()
    encoder = model.network.encoders[modality]
    prep: Any = None
    if modality == "image":
        prep = model.config.data.image.model_dump(mode="json")
    elif modality == "signal":
        prep = model.config.data.signal.model_dump(mode="json")
    elif modality == "tabular" and model.tabular is not None:
        prep = model.tabular.to_dict()
    if precision != "32-true":
        prep = {"inputs": prep, "precision": precision}
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
        device = next(encoder.parameters()).device
        precision = embed_precision(model, device)
        store = (cache or {}).get(m) or cache_for(model, m, precision=precision)
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
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if precision == "bf16-mixed"
            else contextlib.nullcontext()
        )
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            inputs = encoder.collate([Collator.item(out[k], m) for k in idx])
            with autocast:
                emb = encoder(move_batch({"x": inputs}, device)["x"])
            emb = emb.float().cpu().numpy()
            for row, k in enumerate(idx):
                vec = np.ascontiguousarray(emb[row], dtype=np.float32)
                out[k][f"{m}_embedding"] = vec
                if k in keys:
                    store.put(keys[k], vec)
        encoder.train(was_training)
    return out


def packed_batches(
    packs: Mapping[str, PackedEmbeddings],
    present: np.ndarray,
    labels: np.ndarray | None,
    modalities: Sequence[str],
    batch_size: int,
    order: np.ndarray | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches for :class:`~clinfuse.model.FusionNetwork` read from packed embeddings.

    Args:
        packs: ``{modality: (N, D) PackedEmbeddings}`` for every modality.
        present: ``(N, M)`` bool presence mask in ``modalities`` order.
        labels: ``(N,)`` 0/1 outcomes, or None.
        modalities: the network's modalities (mask order).
        batch_size: cases per batch.
        order: case order (a permutation); None = 0..N-1. Rows of a batch are read
            in file order (sorted), which keeps memory-mapped reads sequential.

    Yields:
        ``{"present", "label", "embeddings": {m: (B, D)}, "inputs": {}, "index"}``.
    """
    n = present.shape[0]
    order = np.arange(n) if order is None else np.asarray(order)
    for start in range(0, n, batch_size):
        idx = np.sort(order[start : start + batch_size])
        yield {
            "index": torch.from_numpy(idx),
            "present": torch.from_numpy(np.ascontiguousarray(present[idx])),
            "label": torch.from_numpy(
                np.full(len(idx), np.nan, np.float32)
                if labels is None
                else labels[idx].astype(np.float32)
            ),
            "embeddings": {m: torch.from_numpy(packs[m][idx]) for m in modalities},
            "inputs": {},
        }


def fit_heads_on_packed(
    network: Any,
    packs: Mapping[str, PackedEmbeddings],
    present: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    fused: bool | None = None,
) -> list[float]:
    """Train the unimodal heads of a late-fusion network on cached embeddings, streamed.

    Every encoder is treated as frozen: the batches carry embeddings read from the
    memory-mapped packs, and only the fusion module's parameters (the per-modality
    heads; the late-fusion combiner is fitted afterwards on held-out logits) learn.

    Args:
        network: a :class:`~clinfuse.model.FusionNetwork` (late fusion).
        packs, present, labels: as for :func:`packed_batches`.
        fused: fused AdamW; None = on CUDA.

    Returns:
        The mean training loss of each epoch (read back once per epoch).
    """
    from clinfuse.training.trainer import _unimodal_loss

    device = torch.device(device)
    params = [
        p
        for name, p in network.fusion.named_parameters()
        if p.requires_grad and name not in ("weight_raw", "bias")
    ]
    use_fused = device.type == "cuda" if fused is None else fused
    extra: dict[str, Any] = {"fused": True} if use_fused else {}
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **extra)
    network.to(device).train()
    y = labels.astype(np.float64)
    pos_weight = torch.tensor(
        float((y == 0).sum()) / max(float((y == 1).sum()), 1.0), device=device
    )
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        total = torch.zeros((), dtype=torch.float64, device=device)
        batches = packed_batches(
            packs, present, labels, network.modalities, batch_size, rng.permutation(len(y))
        )
        for cpu_batch in batches:
            batch = move_batch(cpu_batch, device)
            out = network.fusion(batch["embeddings"], batch["present"])
            loss = _unimodal_loss(out.unimodal, batch["present"], batch["label"], pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(cpu_batch["index"])
        history.append(float(total) / max(len(y), 1))
    network.eval()
    return history
