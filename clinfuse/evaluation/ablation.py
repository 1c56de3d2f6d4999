"""Fusion analysis: modality ablation and missing-modality robustness on the same cases.

Both re-run the fusion head with a modality's presence bit cleared, which is
how a modality that is unavailable at test time reaches the model (late fusion
then uses only the modalities left; STYLE 5). No retraining is involved: these
tables say how the *trained* model behaves when inputs go missing
(TRIPOD+AI 27a), not what a model trained on fewer modalities would achieve.

- *Ablation*: each modality alone, each left out, and all, on the cases that
  have every modality (the same cases in every row), with ΔAUROC against
  "all" by the paired DeLong test.
- *Robustness*: for each modality, the cases that have it and at least one
  other modality, scored with and without it (paired).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from clinfuse.evaluation.delong import delong_ci, delong_test
from clinfuse.evaluation.metrics import METRICS, metric_with_ci

__all__ = ["ablation_table", "masked_fusion_probabilities", "modality_subsets", "robustness_table"]

Scorer = Callable[[Sequence[str]], np.ndarray]
"""Given the modalities to keep, (N,) fused risks of every case (NaN where none is left)."""


def modality_subsets(modalities: Sequence[str]) -> list[dict[str, Any]]:
    """The ablation rows: each modality alone, each left out (M > 2), and all."""
    mods = list(modalities)
    rows = [{"name": f"{m} only", "kind": "alone", "keep": [m]} for m in mods]
    if len(mods) > 2:
        rows += [
            {"name": f"without {m}", "kind": "leave_one_out", "keep": [x for x in mods if x != m]}
            for m in mods
        ]
    rows.append({"name": "all modalities", "kind": "all", "keep": mods})
    return rows


def masked_fusion_probabilities(model: Any, cases: Sequence[dict[str, Any]] | Any) -> Scorer:
    """A :data:`Scorer` that re-runs ``model``'s fusion head on ``cases`` with modalities masked out.

    Every encoder runs once, here (:func:`~clinfuse.explain.modality.build_modality_cache`),
    or never when ``cases`` already is that cache; each call then runs only the fusion
    head (:meth:`~clinfuse.model.FusionModel.forward_cache`) and the calibrator. A masked
    modality gets presence 0 — exactly what a missing one gets (the heads ignore absent
    embeddings).

    Args:
        model: a :class:`~clinfuse.model.FusionModel`.
        cases: loaded cases, or their :class:`~clinfuse.explain.modality.ModalityCache`.
    """
    from clinfuse.explain.modality import ModalityCache, build_modality_cache

    modalities = list(model.modalities)
    cache = cases if isinstance(cases, ModalityCache) else build_modality_cache(model, cases)

    def score(keep: Sequence[str]) -> np.ndarray:
        mask = np.array([m in keep for m in modalities])
        present = cache.present & mask[None, :]
        p = model.probabilities(model.forward_cache(cache, present=present))["fusion"]
        return np.where(present.any(axis=1), p, np.nan)

    return score


def _row_metrics(
    y: np.ndarray, p: np.ndarray, *, n_boot: int, seed: int, level: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"auroc": delong_ci(y, p, level=level)}
    for name in ("auprc", "brier"):
        if name == "auprc" and y.sum() == 0:
            out[name] = {"value": None, "ci_low": None, "ci_high": None}
            continue
        res = metric_with_ci(name, y, p, n_boot=n_boot, seed=seed, level=level)
        out[name] = {k: (float(v) if np.isfinite(v) else None) for k, v in res.items()}
    return out


def ablation_table(
    y: np.ndarray,
    present: np.ndarray,
    modalities: Sequence[str],
    scorer: Scorer,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Each modality alone, leave-one-out and all, on the complete cases.

    Args:
        y: (N,) outcomes.
        present: (N, M) presence of each modality as loaded.
        modalities: the run's modalities (M,).
        scorer: see :func:`masked_fusion_probabilities`.

    Returns:
        ``{"n_cases", "n_events", "rows": [{name, kind, keep, auroc, auprc, brier,
        vs_all}]}`` computed on the cases with every modality present.
    """
    complete = present.all(axis=1)
    yc = np.asarray(y, dtype=float)[complete]
    result: dict[str, Any] = {
        "n_cases": int(complete.sum()),
        "n_events": int(yc.sum()),
        "cases": "cases with every modality present",
        "rows": [],
    }
    if complete.sum() == 0:
        result["note"] = "no case has every modality; the ablation needs complete cases"
        return result
    scored = {}
    for spec in modality_subsets(modalities):
        scored[spec["name"]] = scorer(spec["keep"])[complete]
    p_all = scored["all modalities"]
    for spec in modality_subsets(modalities):
        p = scored[spec["name"]]
        row = dict(spec, **_row_metrics(yc, p, n_boot=n_boot, seed=seed, level=level))
        row["vs_all"] = None if spec["kind"] == "all" else delong_test(yc, p_all, p, level=level)
        result["rows"].append(row)
    return result


def robustness_table(
    y: np.ndarray,
    present: np.ndarray,
    modalities: Sequence[str],
    scorer: Scorer,
    *,
    level: float = 0.95,
) -> dict[str, Any]:
    """Performance when each modality is removed at test time (paired, same cases per row).

    Returns:
        ``{"rows": [{removed, n_cases, n_events, n_unscorable, auroc_full,
        auroc_without, difference (DeLong test), brier_full, brier_without}]}``;
        ``n_unscorable`` counts the cases that had only this modality.
    """
    y = np.asarray(y, dtype=float)
    p_full = scorer(list(modalities))
    rows = []
    for i, m in enumerate(modalities):
        others = np.delete(present, i, axis=1).any(axis=1) if present.shape[1] > 1 else None
        has = present[:, i]
        sel = has & others if others is not None else np.zeros_like(has)
        p_wo = scorer([x for x in modalities if x != m])
        ys, pf, pw = y[sel], p_full[sel], p_wo[sel]
        brier = METRICS["brier"]
        rows.append(
            {
                "removed": m,
                "n_cases": int(sel.sum()),
                "n_events": int(ys.sum()),
                "n_unscorable": int((has & ~others).sum())
                if others is not None
                else int(has.sum()),
                "auroc_full": delong_ci(ys, pf, level=level),
                "auroc_without": delong_ci(ys, pw, level=level),
                "difference": delong_test(ys, pf, pw, level=level),
                "brier_full": float(brier(ys[None], pf[None])[0]) if sel.any() else None,
                "brier_without": float(brier(ys[None], pw[None])[0]) if sel.any() else None,
            }
        )
    return {"cases": "cases with the modality and at least one other", "rows": rows}
