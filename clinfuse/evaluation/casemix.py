"""How the evaluated cohort's case mix compares with the data the model was developed on.

An external validation is only interpretable next to this comparison (TRIPOD+AI item
20c): a model evaluated on cases like its development cases tests *reproducibility*; on
different cases, *transportability* (Debray et al., J Clin Epidemiol 2015;68:279–89).
Following Debray's framework, with the model's own per-modality outputs standing in for
predictors that are images, notes and waveforms:

- outcome rate, modality availability and the distribution (mean, SD) of the fused
  linear predictor (logit) in both samples — a wider spread in the evaluated cohort
  means a more heterogeneous case mix, which by itself raises the AUROC;
- a *membership model*: a logistic regression (L2, standardised inputs) telling the
  evaluated cases from the development cases by the fused logit, the outcome, each
  modality's presence and each modality's logit; its apparent c-statistic is near 0.5
  when the samples are alike and near 1 when they differ, and its coefficients say
  what differs;
- for numeric tabular inputs, the standardised mean difference against the training
  split's mean and SD stored in the run (|SMD| > 0.1 flagged, Austin 2009), and how
  many category levels (and cases) the model never saw — counted, not listed, so a
  stray free-text cell does not reach the report.

Cases whose outcome is not known yet (new patients scored for review) are compared the
same way with the outcome left out of the membership model: a check of how far the
model is being applied outside its development data before any outcome arrives.

The development sample is the run's ``predictions.csv`` cases of the ``train`` and
``val`` splits (those that fitted the model and its calibration). When the evaluated
cohort is the development manifest itself, cases in both samples (same case id) are
left out of the development side; in another manifest equal ids are other cases.

For a fold ensemble the development sample is the cross-validation's pooled out-of-fold
predictions: each case scored by the one fold model that did not train on it. The
ensemble's own outputs are means over K models and spread less than one model's (the
demo's 5-fold ensemble: fused-logit SD 1.17 on new cases against 1.33 out of fold, for
cases drawn alike), a difference the membership model would read as case mix. So the
evaluated side is then every fold model's outputs for every case, each row weighted
1/K (``evaluated_models``): the distribution of "one fold model's outputs", as on the
development side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logit

__all__ = ["SMD_FLAG", "case_mix", "check_fold_models", "development_cases"]

SMD_FLAG = 0.1
"""|standardised mean difference| above which a tabular input is flagged."""

_EPS = 1e-6


def development_manifest(model: Path) -> Path | None:
    """The manifest a run or cross-validation folder was developed on, as the folder records
    it (``data_report.json``, or ``crossval.json`` for a cross-validation); None when it is
    not recorded or the record cannot be read. The file itself may have moved since."""
    import json

    from clinfuse.ensemble import is_crossval_folder

    record = model / ("crossval.json" if is_crossval_folder(model) else "data_report.json")
    try:
        path = json.loads(record.read_text(encoding="utf-8")).get("manifest")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(path) if path else None


def development_cases(predictions: pd.DataFrame) -> pd.DataFrame:
    """The development sample in a run's ``predictions.csv``: its train and val cases."""
    if "split" not in predictions.columns:
        return predictions.iloc[0:0]
    return predictions[predictions["split"].isin(["train", "val"])].reset_index(drop=True)


def _has_outcomes(frame: pd.DataFrame) -> bool:
    return "label" in frame.columns and bool(frame["label"].notna().all()) and len(frame) > 0


def _features(
    frame: pd.DataFrame, modalities: Sequence[str], *, outcome: bool
) -> tuple[np.ndarray, list[str]]:
    cols: list[np.ndarray] = [frame["logit_fusion"].to_numpy(float)]
    names = ["fused logit"]
    if outcome:
        cols.append(frame["label"].to_numpy(float))
        names.append("outcome")
    for m in modalities:
        present = frame.get(f"present_{m}")
        p = frame.get(f"p_{m}")
        if present is None or p is None:
            continue
        has = present.to_numpy(float)
        z = logit(np.clip(p.to_numpy(float), _EPS, 1 - _EPS))
        cols += [has, np.where(has > 0, np.nan_to_num(z), 0.0)]
        names += [f"{m} present", f"{m} logit"]
    return np.column_stack(cols), names


def _membership(
    dev: pd.DataFrame, ev: pd.DataFrame, modalities: Sequence[str], *, k: int = 1
) -> dict[str, Any] | None:
    """``ev`` holds each evaluated case ``k`` times (once per fold model), weighted 1/k."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    outcome = _has_outcomes(dev) and _has_outcomes(ev)  # unknown outcomes: left out
    x_dev, names = _features(dev, modalities, outcome=outcome)
    x_ev, names_ev = _features(ev, modalities, outcome=outcome)
    n_ev = len(ev) // k
    if names != names_ev or len(dev) < 2 or n_ev < 2:
        return None
    x = np.vstack([x_dev, x_ev])
    member = np.r_[np.zeros(len(dev)), np.ones(len(ev))]
    weight = np.r_[np.ones(len(dev)), np.full(len(ev), 1.0 / k)]
    mean = np.average(x, axis=0, weights=weight)
    sd = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weight))
    keep = sd > 1e-12  # a column constant in both samples says nothing
    if not keep.any():
        return {
            "c_statistic": 0.5,
            "n_development": len(dev),
            "n_evaluated": n_ev,
            "coefficients": {},
        }
    xs = (x[:, keep] - mean[keep]) / sd[keep]
    fit = LogisticRegression(C=1.0, max_iter=1000).fit(xs, member, sample_weight=weight)
    c = float(roc_auc_score(member, fit.decision_function(xs), sample_weight=weight))
    kept = [n for n, flag in zip(names, keep, strict=True) if flag]
    coef = dict(zip(kept, (float(v) for v in fit.coef_[0]), strict=True))
    return {
        "c_statistic": c,
        "n_development": len(dev),
        "n_evaluated": n_ev,
        "coefficients": dict(sorted(coef.items(), key=lambda kv: -abs(kv[1]))),
    }


def _describe(
    frame: pd.DataFrame, modalities: Sequence[str], logits: pd.DataFrame | None = None
) -> dict[str, Any]:
    """``logits``: the rows whose fused logits describe the sample (every fold model's,
    equally weighted) when not ``frame``'s own."""
    z = (frame if logits is None else logits)["logit_fusion"].to_numpy(float)
    n = len(frame)
    mean = float(z.mean()) if len(z) else None
    # each case counts once: K rows of weight 1/K for a fold ensemble
    sd = float(np.sqrt(((z - z.mean()) ** 2).sum() * n / len(z) / (n - 1))) if n > 1 else None
    out: dict[str, Any] = {
        "n_cases": n,
        "outcome_rate": float(frame["label"].mean()) if _has_outcomes(frame) else None,
        "logit_mean": mean,
        "logit_sd": sd,
        "availability": {},
    }
    for m in modalities:
        col = frame.get(f"present_{m}")
        if col is not None and len(frame):
            out["availability"][m] = float(col.mean())
    return out


def numeric_values(cells: Any) -> np.ndarray:
    """The cells of a numeric tabular column that parse as numbers (empty ones left out)."""
    from clinfuse.io.tabular import _as_float

    parsed = (_as_float(v) for v in cells)
    return np.asarray([f for f in parsed if f is not None], dtype=float)


def standardised_mean_difference(values: np.ndarray, mean: float, sd: float) -> float | None:
    """``(mean(values) − mean) / √((sd² + SD(values)²) / 2)`` (Austin 2009); None for fewer
    than two values, 0 when both spreads are 0."""
    if len(values) < 2:
        return None
    pooled = np.sqrt((sd**2 + np.std(values, ddof=1) ** 2) / 2)
    return float((np.mean(values) - mean) / pooled) if pooled > 0 else 0.0


def _tabular(tabular: Any, values: pd.DataFrame | None) -> list[dict[str, Any]]:
    """SMD of each numeric input against the training split; unseen category levels."""
    if tabular is None or values is None or not len(values):
        return []
    from clinfuse.io.tabular import _is_empty

    rows: list[dict[str, Any]] = []
    for col in tabular.columns:
        kind = tabular.kinds_.get(col)
        series = values[col] if col in values.columns else pd.Series([None] * len(values))
        if kind == "numeric":
            # the evaluated cases loaded, so their numeric cells parse
            arr = numeric_values(series)
            mean_d, sd_d = tabular.means_[col], tabular.stds_[col]
            row: dict[str, Any] = {
                "column": col,
                "kind": "numeric",
                "development_mean": mean_d,
                "development_sd": sd_d,
                "mean": float(arr.mean()) if len(arr) else None,
                "sd": float(arr.std(ddof=1)) if len(arr) > 1 else None,
                "missing_fraction": 1 - len(arr) / len(series),
            }
            row["smd"] = standardised_mean_difference(arr, mean_d, sd_d)
            row["flagged"] = row["smd"] is not None and abs(row["smd"]) > SMD_FLAG
            rows.append(row)
        else:
            # counted, not listed: a stray free-text cell must not reach a report
            seen = {str(c) for c in tabular.categories_.get(col, [])}
            cells = [str(v).strip() for v in series if not _is_empty(v)]
            unseen = [c for c in cells if c not in seen]
            rows.append(
                {
                    "column": col,
                    "kind": "categorical",
                    "n_unseen_levels": len(set(unseen)),
                    "n_cases_unseen": len(unseen),
                    "flagged": bool(unseen),
                }
            )
    return rows


def case_mix(
    development: pd.DataFrame,
    evaluated: pd.DataFrame,
    modalities: Sequence[str],
    *,
    tabular: Any = None,
    tabular_values: pd.DataFrame | None = None,
    same_manifest: bool = False,
    evaluated_models: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Compare the evaluated cases with the development cases.

    Args:
        development: the run's development cases (:func:`development_cases`).
        evaluated: the evaluation's predictions (``case_id``, ``label``,
            ``logit_fusion``, ``p_<m>``, ``present_<m>``).
        modalities: the run's modalities.
        tabular: the run's fitted :class:`~clinfuse.io.tabular.TabularEncoder` (or None).
        tabular_values: the evaluated cases' raw tabular columns, rows in
            ``evaluated``'s order.
        same_manifest: the evaluated cohort is the development manifest: a case id
            in both samples is the same case (left out of the development side).
        evaluated_models: for a fold ensemble, whose ``development`` is the
            cross-validation's out-of-fold predictions: each fold model's outputs for the
            evaluated cases (:attr:`clinfuse.ensemble.EnsembleScores.per_model`: the
            columns of ``evaluated`` plus ``model``, every case once per model). The
            fused-logit distribution and the membership model then use these rows, each
            weighted 1/K, instead of the ensemble's averaged outputs.

    Returns:
        ``{"development", "evaluated", "n_overlap", "membership", "tabular",
        "fold_models", "interpretation"}`` (``fold_models``: K when ``evaluated_models``
        was used, else None).

    Raises:
        ValueError: ``evaluated_models`` does not hold every evaluated case once per model.
    """
    overlap: set[str] = set()
    if same_manifest:
        overlap = set(development["case_id"].astype(str)) & set(evaluated["case_id"].astype(str))
    dev = development[~development["case_id"].astype(str).isin(overlap)].reset_index(drop=True)
    k = 1
    compared = evaluated
    if evaluated_models is not None:
        k = check_fold_models(evaluated, evaluated_models)
        compared = evaluated_models
    membership = _membership(dev, compared, modalities, k=k) if len(dev) else None
    out: dict[str, Any] = {
        "development": _describe(dev, modalities),
        "evaluated": _describe(evaluated, modalities, compared),
        "n_overlap": len(overlap),
        "membership": membership,
        "tabular": _tabular(tabular, tabular_values),
        "fold_models": k if evaluated_models is not None else None,
    }
    out["interpretation"] = _interpret(out)
    return out


def check_fold_models(evaluated: pd.DataFrame, per_model: pd.DataFrame) -> int:
    """K, the number of fold models, after checking every case appears once per model."""
    if "model" not in per_model.columns or per_model.empty:
        raise ValueError("evaluated_models needs a 'model' column and one row per case and model")
    k = int(per_model["model"].nunique())
    ids = evaluated["case_id"].astype(str)
    counts = per_model.groupby(per_model["case_id"].astype(str))["model"].nunique()
    rows = per_model["case_id"].astype(str).value_counts()
    if set(counts.index) != set(ids) or (counts != k).any() or (rows != k).any():
        raise ValueError(
            f"evaluated_models must hold each of the {len(ids)} evaluated cases once for each "
            f"of its {k} models"
        )
    return k


def _interpret(res: dict[str, Any]) -> str:
    mem = res["membership"]
    if mem is None:
        if res["n_overlap"] and not res["development"]["n_cases"]:
            return (
                "Every development case is also in the evaluated cohort: no comparison (evaluate "
                "with --split test, or on another cohort)."
            )
        return "Too few cases to compare with the development data."
    c = mem["c_statistic"]
    if res["evaluated"]["outcome_rate"] is None:  # scored cases, outcomes not known yet
        if c < 0.6:
            kind = "similar to the development data"
        elif c < 0.8:
            kind = "moderately different from the development data"
        else:
            kind = (
                "very different from the development data: the performance measured at "
                "development may not carry over to these cases"
            )
        return _spread_and_top(
            f"Membership model c = {c:.2f} (outcomes not known yet, so compared on the model's "
            f"inputs and outputs only): the case mix is {kind}.",
            res,
        )
    if c < 0.6:
        kind = "similar to the development data: this evaluation mainly tests reproducibility"
    elif c < 0.8:
        kind = "moderately different from the development data"
    else:
        kind = "very different from the development data: this evaluation tests transportability"
    return _spread_and_top(f"Membership model c = {c:.2f}: the case mix is {kind}.", res)


def _spread_and_top(text: str, res: dict[str, Any]) -> str:
    mem = res["membership"]
    sd_d, sd_e = res["development"]["logit_sd"], res["evaluated"]["logit_sd"]
    if sd_d and sd_e:
        ratio = sd_e / sd_d
        if ratio > 1.1:
            text += (
                f" The fused logit is more spread out here (SD ratio {ratio:.2f}), which by itself "
                "raises discrimination."
            )
        elif ratio < 0.9:
            text += (
                f" The fused logit is less spread out here (SD ratio {ratio:.2f}): a more "
                "homogeneous case mix, which by itself lowers discrimination."
            )
    if mem["coefficients"]:
        top = next(iter(mem["coefficients"]))
        text += f" The largest difference: {top}."
    if res.get("fold_models"):
        text += (
            f" Compared through each of the {res['fold_models']} fold models' outputs, weighted "
            "equally, as every development case has one out-of-fold model's outputs (the "
            "ensemble's averages spread less)."
        )
    return text
