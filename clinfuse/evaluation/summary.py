"""The run's ``metrics.json``: discrimination and Brier score with bootstrap CIs.

Contract (DESIGN.md): ``models.<name>.<metric>.{value, ci_low, ci_high}`` for
``fusion`` and each modality, metrics ``auroc``, ``auprc``, ``brier``, plus
``n_cases`` and ``n_events``. A modality's metrics are computed on the cases
where it is present (its model cannot score the others); ``paired`` compares
the fused model with each modality on exactly those cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.evaluation.metrics import METRICS, metric_with_ci

__all__ = ["summarize_predictions"]


def _block(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n_cases": len(y), "n_events": int(np.sum(y))}
    for name in METRICS:
        if len(y) == 0 or (name in ("auroc",) and len(np.unique(y)) < 2):
            out[name] = {"value": None, "ci_low": None, "ci_high": None}
            continue
        res = metric_with_ci(name, y, p, n_boot=n_boot, seed=seed)
        out[name] = {
            k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in res.items()
        }
    return out


def summarize_predictions(
    frame: pd.DataFrame,
    modalities: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of the fused model and each modality on a predictions table.

    Args:
        frame: rows with ``label``, ``p_fusion``, ``p_<m>`` (NaN where missing).
        modalities: the run's modalities.
        n_boot: bootstrap replicates for the 95 % CIs.
        seed: bootstrap seed.
    """
    data = frame[frame["label"].notna()]
    y = data["label"].to_numpy(dtype=float)
    result: dict[str, Any] = {
        "n_cases": len(y),
        "n_events": int(y.sum()),
        "models": {"fusion": _block(y, data["p_fusion"].to_numpy(dtype=float), n_boot, seed)},
        "paired": {},
    }
    for m in modalities:
        p_m = data[f"p_{m}"].to_numpy(dtype=float)
        has = ~np.isnan(p_m)
        result["models"][m] = _block(y[has], p_m[has], n_boot, seed)
        fused_same = _block(y[has], data["p_fusion"].to_numpy(dtype=float)[has], n_boot, seed)
        result["paired"][m] = {
            "n_cases": int(has.sum()),
            "auroc_fusion": fused_same["auroc"],
            "auroc_modality": result["models"][m]["auroc"],
        }
    return result
