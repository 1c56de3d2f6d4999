"""Modality-level explanations: exact Shapley values with whole modalities as players.

Removing a modality is done the way a missing modality is handled by the
fusion head: its presence bit is set to 0. So the value of a coalition S for a
case is the fused logit computed with the presence mask ``present ∩ S``, for
every fusion strategy (late, early, intermediate), through the head itself::

    v_i(S) = fusion(embeddings_i, present_i ∧ S).logit

The 2^M coalition values of every case are computed once, in large batches, on
the cached embeddings (:class:`ModalityCache`); :func:`modality_shapley` then
hands them to ``shap.ExactExplainer`` (callable masker; one call per presence pattern,
every case with that pattern one output), so the values are exact, additive
(``base + Σφ = fused logit``) and take microseconds per case. For late fusion they equal the closed form
``φ_m = w_m (z_m − c_m)`` with base value ``b``.

Cohort level: :func:`modality_importance` (mean |φ| with bootstrap CIs) and
:func:`performance_shapley` (HAIM-style: the value of a subset is the AUROC of
the fused model restricted to that subset).

>>> cache = build_modality_cache(model, cases)          # doctest: +SKIP
>>> exp = modality_shapley(model, cache)                 # shap.Explanation (N, M)
>>> shap.plots.bar(exp)                                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clinfuse.errors import ConfigError
from clinfuse.explain._common import NoModalityWarning, import_shap

__all__ = [
    "ModalityCache",
    "build_modality_cache",
    "coalition_values",
    "modality_importance",
    "modality_shapley",
    "performance_shapley",
]


@dataclass
class ModalityCache:
    """Per-case embeddings and presence: everything modality Shapley values need.

    Attributes:
        case_ids: (N,) case ids.
        modalities: the run's modalities (mask order).
        embeddings: {modality: (N, D_m) float32}, zeros where the modality is missing.
        present: (N, M) bool presence mask.
        labels: (N,) float outcomes (NaN where unknown).
        splits: (N,) split names (None where unknown).
    """

    case_ids: list[str]
    modalities: list[str]
    embeddings: dict[str, np.ndarray]
    present: np.ndarray
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    splits: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> ModalityCache:
        """The cache restricted to rows ``index`` (in that order)."""
        idx = np.asarray(index, dtype=int)
        return ModalityCache(
            case_ids=[self.case_ids[i] for i in idx],
            modalities=list(self.modalities),
            embeddings={m: e[idx] for m, e in self.embeddings.items()},
            present=self.present[idx],
            labels=self.labels[idx] if len(self.labels) else self.labels,
            splits=[self.splits[i] for i in idx] if self.splits else [],
        )

    @classmethod
    def concat(cls, parts: Sequence[ModalityCache]) -> ModalityCache:
        """The caches of consecutive chunks of cases as one (same modalities, in order)."""
        if not parts:
            raise ConfigError("no cache to concatenate")
        first = parts[0]
        return cls(
            case_ids=[c for part in parts for c in part.case_ids],
            modalities=list(first.modalities),
            embeddings={
                m: np.concatenate([part.embeddings[m] for part in parts]) for m in first.modalities
            },
            present=np.concatenate([part.present for part in parts]),
            labels=np.concatenate([part.labels for part in parts]),
            splits=[x for part in parts for x in part.splits],
        )

    def index_of(self, case_id: str) -> int:
        """Row of ``case_id``; raises :class:`~clinfuse.errors.CohortError` naming it if absent."""
        try:
            return self.case_ids.index(case_id)
        except ValueError:
            from clinfuse.explain._common import unknown_case_error

            raise unknown_case_error(case_id, self.case_ids) from None


@torch.no_grad()
def build_modality_cache(
    model: Any, cases: Sequence[dict[str, Any]], *, batch_size: int | None = None
) -> ModalityCache:
    """Run every encoder once and keep the embeddings (the expensive part of explaining).

    Args:
        model: a :class:`~clinfuse.model.FusionModel`.
        cases: loaded case dicts (:class:`~clinfuse.data.CaseLoader`).
        batch_size: cases per forward pass (default: the run's batch size).

    Returns:
        The :class:`ModalityCache` of ``cases``.
    """
    from clinfuse.model import Collator, move_batch
    from clinfuse.training.embed import attach_embeddings

    batch_size = batch_size or model.config.training.batch_size
    frozen = model.frozen_modalities
    cases = list(cases)
    if frozen:
        cases = attach_embeddings(model, cases, frozen)
    collate = Collator(model.modalities, dict(model.network.encoders), frozen)
    network = model.network
    was_training = network.training
    network.eval()
    device = model.device
    parts: dict[str, list[np.ndarray]] = {m: [] for m in model.modalities}
    present: list[np.ndarray] = []
    try:
        for start in range(0, len(cases), batch_size):
            batch = move_batch(collate(cases[start : start + batch_size]), device)
            emb = network.embed(batch)
            mask = batch["present"].cpu().numpy()
            for i, m in enumerate(model.modalities):
                e = emb[m].float().cpu().numpy()
                parts[m].append(np.where(mask[:, i : i + 1], e, 0.0).astype(np.float32))
            present.append(mask)
    finally:
        network.train(was_training)
    dims = network.fusion.embed_dims
    n_mod = len(model.modalities)
    return ModalityCache(
        case_ids=[c["case_id"] for c in cases],
        modalities=list(model.modalities),
        embeddings={
            m: np.concatenate(parts[m]) if parts[m] else np.zeros((0, dims[m]), np.float32)
            for m in model.modalities
        },
        present=np.concatenate(present) if present else np.zeros((0, n_mod), bool),
        labels=np.array(
            [np.nan if c.get("label") is None else float(c["label"]) for c in cases], dtype=float
        ),
        splits=[c.get("split") for c in cases],
    )


def _fusion_of(model_or_fusion: Any) -> Any:
    from clinfuse.fusion.base import FusionHead

    if isinstance(model_or_fusion, FusionHead):
        return model_or_fusion
    network = getattr(model_or_fusion, "network", model_or_fusion)
    fusion = getattr(network, "fusion", None)
    if not isinstance(fusion, FusionHead):
        raise ConfigError(
            f"expected a FusionModel, FusionNetwork or fusion head, got {type(model_or_fusion).__name__}"
        )
    return fusion


def coalition_masks(n_modalities: int) -> np.ndarray:
    """(2^M, M) bool: row ``s`` holds modality ``m`` iff bit ``m`` of ``s`` is set."""
    s = np.arange(2**n_modalities)[:, None]
    return ((s >> np.arange(n_modalities)[None, :]) & 1).astype(bool)


@torch.no_grad()
def coalition_values(
    model_or_fusion: Any, cache: ModalityCache, *, rows_per_batch: int = 8192
) -> np.ndarray:
    """Fused logit of every case under every coalition of modalities.

    The fusion head runs in float64 on a copy (so additivity holds to ~1e-12),
    with the presence mask restricted to each coalition.

    Args:
        model_or_fusion: a FusionModel, FusionNetwork or fusion head.
        cache: embeddings and presence of the cases.
        rows_per_batch: (case, coalition) rows per forward pass.

    Returns:
        (N, 2^M) float64; column ``s`` is the coalition of :func:`coalition_masks` row ``s``.
    """
    fusion = copy.deepcopy(_fusion_of(model_or_fusion)).to("cpu", torch.float64).eval()
    n, n_mod = cache.present.shape
    coalitions = torch.from_numpy(coalition_masks(n_mod))  # (S, M)
    n_coal = coalitions.shape[0]
    out = np.zeros((n, n_coal), dtype=np.float64)
    step = max(1, rows_per_batch // n_coal)
    for start in range(0, n, step):
        stop = min(n, start + step)
        k = stop - start
        present = torch.from_numpy(cache.present[start:stop])  # (k, M)
        mask = (present[:, None, :] & coalitions[None]).reshape(k * n_coal, n_mod)
        emb = {
            m: torch.from_numpy(cache.embeddings[m][start:stop])
            .double()
            .repeat_interleave(n_coal, dim=0)
            for m in cache.modalities
        }
        logit = fusion(emb, mask).logit.reshape(k, n_coal)
        out[start:stop] = logit.numpy()
    return out


class _CoalitionMasker:
    """shap callable masker: a masked modality gets presence 0 (exactly like a missing one).

    ``x`` is a case's (M,) presence vector; the masked sample is ``x ∧ mask``.
    """

    def __init__(self, n_modalities: int) -> None:
        self.shape = (1, n_modalities)

    def __call__(self, mask: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.where(mask, x, 0.0)[None]


def modality_shapley(
    model_or_fusion: Any,
    cache: ModalityCache,
    *,
    values: np.ndarray | None = None,
) -> Any:
    """Exact per-case Shapley values of the fused logit, with modalities as players.

    Args:
        model_or_fusion: a FusionModel, FusionNetwork or fusion head.
        cache: from :func:`build_modality_cache`.
        values: precomputed :func:`coalition_values` (computed when None).

    Returns:
        ``shap.Explanation`` with ``values`` (N, M) (0 where a modality is
        missing), ``base_values`` (N,) (the fused logit with nothing observed),
        ``data`` (N, M) the presence bits, ``feature_names`` the modalities.
        ``base_values + values.sum(1)`` is the fused logit.

    Warns:
        NoModalityWarning: some case has no modality present (its values are 0
            and its prediction is the base rate).
    """
    shap = import_shap()
    n, n_mod = cache.present.shape
    table = coalition_values(model_or_fusion, cache) if values is None else values
    if table.shape != (n, 2**n_mod):
        raise ConfigError(
            f"coalition values must be (cases={n}, 2^M={2**n_mod}), got {table.shape}"
        )
    data = cache.present.astype(np.float64)
    phi, base = _exact_shapley_rows(table, cache.modalities, present=cache.present)
    # a missing modality is a null player: its value is exactly 0 (drop ~1e-17 rounding)
    phi[~cache.present] = 0.0
    empty = ~cache.present.any(axis=1)
    if empty.any():
        ids = [cache.case_ids[i] for i in np.flatnonzero(empty)[:5]]
        warnings.warn(
            f"{int(empty.sum())} case(s) have no modality present (e.g. {ids}): "
            "their explanation is the base rate (fused logit with nothing observed), all φ = 0",
            NoModalityWarning,
            stacklevel=2,
        )
    return shap.Explanation(
        values=phi,
        base_values=base,
        data=data,
        feature_names=list(cache.modalities),
        output_names="fused logit",
    )


def modality_shapley_frame(exp: Any, cache: ModalityCache) -> Any:
    """The ``modality_shapley.csv`` table (DESIGN contract) from an explanation.

    Columns: ``case_id``, ``base_value``, ``phi_<modality>``…, ``logit_fusion``.
    """
    import pandas as pd

    frame = pd.DataFrame({"case_id": cache.case_ids, "base_value": exp.base_values})
    for j, m in enumerate(cache.modalities):
        frame[f"phi_{m}"] = exp.values[:, j]
    frame["logit_fusion"] = exp.base_values + exp.values.sum(axis=1)
    return frame


def _mean_batch(_y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.asarray(p).mean(axis=1)


def modality_importance(
    exp: Any, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Cohort-level importance: mean |φ| per modality with a percentile bootstrap CI.

    The mean runs over all cases (a missing modality contributes |φ| = 0, so a
    rarely available modality matters less for the cohort, as in SHAP's global
    bar plot).

    Returns:
        ``{modality: {"mean_abs_phi", "ci_low", "ci_high", "n_present"}}``.
    """
    from clinfuse.evaluation.metrics import bootstrap_ci

    values = np.abs(np.asarray(exp.values, dtype=float))
    present = np.asarray(exp.data) > 0
    out: dict[str, dict[str, float]] = {}
    for j, m in enumerate(exp.feature_names):
        col = values[:, j]
        if n_boot > 0 and len(col) > 1:
            low, high, _ = bootstrap_ci(
                np.zeros_like(col), col, _mean_batch, n_boot=n_boot, seed=seed, level=level
            )
        else:
            low = high = float("nan")
        out[str(m)] = {
            "mean_abs_phi": float(col.mean()) if len(col) else float("nan"),
            "ci_low": low,
            "ci_high": high,
            "n_present": int(present[:, j].sum()),
        }
    return out


def _exact_shapley_rows(
    tables: np.ndarray, names: Sequence[str], *, present: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Shapley values (via ``shap.ExactExplainer``) of set functions given as tables.

    Rows with the same players present share the masked inputs, so each presence pattern
    takes one explainer call (≤ 2^M calls), the rows being the model's outputs.

    Args:
        tables: (R, 2^M) values of each of R set functions on every coalition.
        names: the M players.
        present: (R, M) players present in each row (absent ones are null players);
            all present when None.

    Returns:
        ``(phi (R, M), base (R,))``.
    """
    shap = import_shap()
    n_rows, n_mod = tables.shape[0], len(names)
    present = np.ones((n_rows, n_mod), bool) if present is None else np.asarray(present, bool)
    bits = 1 << np.arange(n_mod)
    patterns = present.astype(np.int64) @ bits
    phi = np.zeros((n_rows, n_mod))
    base = np.zeros(n_rows)
    for pattern in np.unique(patterns):
        rows = np.flatnonzero(patterns == pattern)
        group = tables[rows]

        def value_fn(x: np.ndarray, group: np.ndarray = group) -> np.ndarray:
            # x: (K, M) masked presence vectors -> (K, rows of this pattern)
            return group[:, (np.asarray(x) > 0).astype(np.int64) @ bits].T

        explainer = shap.ExactExplainer(
            value_fn, _CoalitionMasker(n_mod), feature_names=list(names)
        )
        e = explainer(present[rows[:1]].astype(np.float64), silent=True)
        phi[rows] = np.asarray(e.values, dtype=float).reshape(n_mod, len(rows)).T
        base[rows] = np.asarray(e.base_values, dtype=float).reshape(len(rows))
    return phi, base


def performance_shapley(
    model_or_fusion: Any,
    cache: ModalityCache,
    *,
    values: np.ndarray | None = None,
    metric: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """HAIM-style performance Shapley: how much each modality adds to the cohort's AUROC.

    The value of a subset S of modalities is the metric (default AUROC) of the
    fused model when every case keeps only its modalities in S (the empty set
    gives every case the base logit: AUROC 0.5). Shapley values over subsets
    split ``AUROC(all) − 0.5`` among the modalities. Bootstrap: the cases are
    resampled, every subset's AUROC recomputed and the Shapley values taken
    per replicate (percentile CI).

    Args:
        cache: the evaluation cases (with labels); pass ``cache.subset(...)`` to
            restrict to the test split.
        metric: a ``*_batch`` metric of :mod:`clinfuse.evaluation.metrics`
            (default ``auroc_batch``).

    Returns:
        ``{"metric", "n_cases", "n_events", "value_all", "value_empty",
        "subsets": {"image+note": value, ...}, "modalities": {m: {"value",
        "ci_low", "ci_high"}}}``.
    """
    from clinfuse.evaluation.metrics import auroc_batch

    metric = metric or auroc_batch
    y = np.asarray(cache.labels, dtype=float)
    keep = np.isfinite(y)
    if keep.sum() < 2 or len(np.unique(y[keep])) < 2:
        raise ConfigError(
            f"performance Shapley needs labelled cases of both outcomes; got {int(keep.sum())} "
            f"labelled case(s) with outcomes {sorted(set(y[keep].tolist()))}",
            field="label",
        )
    table = coalition_values(model_or_fusion, cache) if values is None else values
    table, y = table[keep], y[keep]
    n_mod = len(cache.modalities)
    point = metric(np.repeat(y[None], table.shape[1], axis=0), table.T)  # (S,)
    point = np.where(np.isfinite(point), point, 0.5)
    phi, base = _exact_shapley_rows(point[None], cache.modalities)

    rows = np.zeros((0, table.shape[1]))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))
        yb = y[idx]  # (B, N)
        rows = np.empty((n_boot, table.shape[1]))
        for s in range(table.shape[1]):
            rows[:, s] = metric(yb, table[idx, s])
        ok = np.isfinite(rows).all(axis=1)
        rows = rows[ok]
    boot_phi = _exact_shapley_rows(rows, cache.modalities)[0] if len(rows) else None
    alpha = (1 - level) / 2
    masks = coalition_masks(n_mod)
    names = [
        "+".join(m for m, on in zip(cache.modalities, masks[s], strict=True) if on) or "(none)"
        for s in range(len(masks))
    ]
    result: dict[str, Any] = {
        "metric": getattr(metric, "__name__", "metric").replace("_batch", ""),
        "n_cases": len(y),
        "n_events": int(y.sum()),
        "value_all": float(point[-1]),
        "value_empty": float(base[0]),
        "subsets": dict(zip(names, point.tolist(), strict=True)),
        "modalities": {},
    }
    for j, m in enumerate(cache.modalities):
        low = high = float("nan")
        if boot_phi is not None:
            low, high = (float(q) for q in np.quantile(boot_phi[:, j], [alpha, 1 - alpha]))
        result["modalities"][m] = {"value": float(phi[0, j]), "ci_low": low, "ci_high": high}
    return result
