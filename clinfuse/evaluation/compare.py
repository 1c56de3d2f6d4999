"""Compare models on the same cases: paired differences with intervals and tests.

"Does the fused model beat the baseline?" is a paired question: both models scored
the same patients, so their errors are correlated and two separate confidence
intervals that overlap say little. :func:`compare_evaluations` takes evaluation
folders written by ``clinfuse evaluate`` (or cross-validation folders written by
``clinfuse crossval``: their pooled out-of-fold predictions), matches the cases by
``case_id`` and reports, against a reference model (the first):

- ΔAUROC by the paired DeLong test (CI, z, p), Holm-adjusted over the comparisons;
- ΔBrier and Δnet benefit at each threshold with paired percentile bootstrap CIs
  (the same resampled cases for both models in every replicate);
- the integrated discrimination improvement (IDI: the difference of the discrimination
  slopes, mean risk of events − mean risk of non-events; Pencina et al. 2008) and the
  categorical net reclassification improvement over the risk categories the thresholds
  make, its event and non-event parts reported separately (as Kerr et al., 2014 and
  Pepe et al., 2015 advise: their sum weighs the two groups equally whatever the
  prevalence, and a worse-calibrated model can gain NRI), paired bootstrap CIs;
- each model's AUROC (DeLong CI), Brier, calibration intercept and slope, and O/E
  on the common cases; overlaid ROC, calibration and decision curves.

Each difference is *other − reference*: a positive ΔAUROC or Δnet benefit, or a
negative ΔBrier, favours the other model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinfuse import __version__
from clinfuse.errors import CohortError, ConfigError

__all__ = [
    "ComparisonResult",
    "compare_evaluations",
    "discrimination_slope",
    "holm",
    "paired_bootstrap",
    "reclassification",
]

SCHEMA = "clinfuse.comparison.v1"


@dataclass
class ComparisonResult:
    """What :func:`compare_evaluations` wrote.

    Attributes:
        out: the comparison folder.
        comparison: ``comparison.json``.
        models: one row per model (``models.csv``).
        pairs: one row per comparison with the reference (``pairs.csv``).
    """

    out: Path
    comparison: dict[str, Any]
    models: pd.DataFrame
    pairs: pd.DataFrame

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values (``None`` entries are left out).

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    idx = [i for i, p in enumerate(p_values) if p is not None]
    ps = np.array([p_values[i] for i in idx], dtype=float)
    order = np.argsort(ps, kind="stable")
    m = len(ps)
    adjusted = np.empty(m)
    running = 0.0
    for rank, j in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[j]))
        adjusted[j] = running
    out: list[float | None] = [None] * len(p_values)
    for k, i in enumerate(idx):
        out[i] = float(round(adjusted[k], 15))
    return out


def paired_bootstrap(
    y: np.ndarray,
    p_ref: np.ndarray,
    p_other: np.ndarray,
    statistic: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap CI of ``statistic(y, p_other) − statistic(y, p_ref)``.

    Each replicate resamples the cases once and scores both models on them (through
    :func:`~clinfuse.evaluation.metrics.bootstrap_ci`: replicate ``b`` uses
    ``default_rng(seed).integers(0, N, size=(n_boot, N))[b]``).

    Args:
        statistic: ``(y (B, N), p (B, N)) -> (B,)``.

    Returns:
        ``{"value", "ci_low", "ci_high"}`` (CI ``None`` when ``n_boot`` is 0).
    """
    from clinfuse.evaluation.metrics import bootstrap_ci

    y = np.asarray(y, dtype=float)
    both = np.column_stack([p_ref, p_other]).astype(float)

    def difference(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
        return np.asarray(statistic(yy, pp[..., 1]) - statistic(yy, pp[..., 0]))

    value = float(difference(y[None], both[None])[0])
    if n_boot == 0:
        return {"value": value, "ci_low": None, "ci_high": None}
    low, high, _ = bootstrap_ci(
        y, both, difference, n_boot=n_boot, seed=seed, level=level, method="resample"
    )
    return {"value": value, "ci_low": low, "ci_high": high}


def _brier(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.asarray(np.mean((p - y) ** 2, axis=-1))


def discrimination_slope(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean risk of the events minus mean risk of the non-events, batched:
    ``(B, N), (B, N) -> (B,)`` (NaN for a replicate with one class)."""
    y = np.asarray(y, dtype=float)
    n1 = y.sum(axis=-1)
    n0 = y.shape[-1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((p * y).sum(axis=-1) / n1 - (p * (1 - y)).sum(axis=-1) / n0)


def reclassification(
    y: np.ndarray, p_ref: np.ndarray, p_other: np.ndarray, thresholds: Sequence[float]
) -> dict[str, Any]:
    """Categorical net reclassification from ``p_ref`` to ``p_other``.

    The thresholds cut risk into ``len(thresholds) + 1`` categories (a risk equal to a
    threshold belongs to the upper one, as ``p ≥ t`` flags it elsewhere).

    Returns:
        ``{"nri_events", "nri_nonevents", "nri", "table"}``: the event part
        P(up | event) − P(down | event), the non-event part
        P(down | non-event) − P(up | non-event), their sum, and the
        reclassification table (rows: the reference's category, columns: the
        other's; one table for events, one for non-events).
    """
    y = np.asarray(y, dtype=int)
    cuts = np.sort(np.asarray(thresholds, dtype=float))
    a = np.searchsorted(cuts, p_ref, side="right")
    b = np.searchsorted(cuts, p_other, side="right")
    k = len(cuts) + 1
    out: dict[str, Any] = {}
    for name, cls in (("events", 1), ("nonevents", 0)):
        sel = y == cls
        up = float(np.mean(b[sel] > a[sel])) if sel.any() else float("nan")
        down = float(np.mean(b[sel] < a[sel])) if sel.any() else float("nan")
        out[f"nri_{name}"] = up - down if cls == 1 else down - up
        table = np.zeros((k, k), dtype=int)
        np.add.at(table, (a[sel], b[sel]), 1)
        out.setdefault("table", {})[name] = table.tolist()
    out["nri"] = out["nri_events"] + out["nri_nonevents"]
    return out


def _nri_part(thresholds: Sequence[float], part: str) -> Any:
    """One part of the NRI for a batch of paired replicates: ``(B, N), (B, N, 2) -> (B,)``."""
    cuts = np.sort(np.asarray(thresholds, dtype=float))

    def stat(y: np.ndarray, pp: np.ndarray) -> np.ndarray:
        a = np.searchsorted(cuts, pp[..., 0], side="right")
        b = np.searchsorted(cuts, pp[..., 1], side="right")
        move = np.sign(b - a)  # +1 up, -1 down
        y = np.asarray(y, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            ev = (move * y).sum(axis=-1) / y.sum(axis=-1)
            nonev = -(move * (1 - y)).sum(axis=-1) / (1 - y).sum(axis=-1)
        return np.asarray({"events": ev, "nonevents": nonev, "nri": ev + nonev}[part])

    return stat


def _net_benefit_at(t: float) -> Any:
    """Net benefit at threshold ``t`` of a batch: ``(B, N), (B, N) -> (B,)``."""

    def nb(y: np.ndarray, p: np.ndarray) -> np.ndarray:
        flagged = p >= t
        n = y.shape[-1]
        return np.asarray(
            (flagged & (y == 1)).sum(axis=-1) / n
            - (flagged & (y == 0)).sum(axis=-1) / n * t / (1 - t)
        )

    return nb


@dataclass
class _Source:
    name: str
    folder: Path
    predictions: pd.DataFrame
    metrics: dict[str, Any]


def read_evaluation(path: Path, name: str | None = None) -> _Source:
    """An evaluation folder's (or a cross-validation folder's pooled) predictions and metrics.

    Raises:
        ConfigError: a run folder, or not an evaluation folder.
        CohortError: a case listed twice.
    """
    label = name or Path(path).name
    # a cross-validation folder: its pooled out-of-fold evaluation
    folder = Path(path) / "evaluation" if (Path(path) / "crossval.json").exists() else Path(path)
    preds, metrics_file = folder / "predictions.csv", folder / "metrics.json"
    if (Path(path) / "model" / "model.json").exists():
        raise ConfigError(
            "this is a run folder (its predictions.csv mixes the training splits); an "
            "evaluation of the model on a cohort is needed",
            path=path,
            hint="run `clinfuse evaluate RUN COHORT --out EVAL` first and give the EVAL folder",
        )
    if not preds.exists() or not metrics_file.exists():
        raise ConfigError(
            "not an evaluation folder (no predictions.csv and metrics.json)",
            path=path,
            hint="give folders written by `clinfuse evaluate` or `clinfuse crossval`",
        )
    frame = pd.read_csv(preds, dtype={"case_id": str})
    missing = [c for c in ("case_id", "label", "p_fusion") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"predictions.csv lacks column(s) {', '.join(missing)}",
            path=preds,
            hint="give folders written by `clinfuse evaluate` or `clinfuse crossval`",
        )
    if frame["case_id"].duplicated().any():
        dup = frame.loc[frame["case_id"].duplicated(), "case_id"].iloc[0]
        raise CohortError(
            f"case {dup!r} appears twice in predictions.csv", path=preds, field="case_id"
        )
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    return _Source(label, folder, frame, metrics)


def compare_evaluations(
    folders: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    thresholds: Sequence[float] | str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    allow_other_cohorts: bool = False,
    overwrite: bool = False,
) -> ComparisonResult:
    """Compare two or more evaluated models on their common cases.

    Args:
        folders: evaluation folders (``clinfuse evaluate``) or cross-validation folders
            (``clinfuse crossval``); the first is the reference.
        out: the comparison folder to create.
        names: a label per folder (default: the folder names).
        thresholds: risk thresholds for Δnet benefit and the reclassification
            categories (default 0.1, 0.2, 0.3).
        n_boot: paired bootstrap replicates.
        seed: bootstrap seed.
        level: confidence level.
        allow_other_cohorts: compare evaluations of different manifests (their case ids
            are matched all the same: only sensible for copies of one cohort).
        overwrite: replace an existing folder.

    Raises:
        ConfigError: fewer than two folders, a folder that is not an evaluation,
            names not matching the folders, a busy ``out``, evaluations of different
            manifests.
        CohortError: a case with different outcomes in two folders, or fewer than
            two common cases with both outcomes.
    """
    from clinfuse.evaluation.calibration import calibration_summary
    from clinfuse.evaluation.delong import delong_ci, delong_test
    from clinfuse.evaluation.evaluate import _check_out, parse_thresholds
    from clinfuse.evaluation.metrics import bootstrap_ci
    from clinfuse.evaluation.utility import net_benefit

    if len(folders) < 2:
        raise ConfigError("compare needs at least two evaluation folders", field="folders")
    if names is not None and len(names) != len(folders):
        raise ConfigError(
            f"{len(names)} name(s) for {len(folders)} folders; give one per folder",
            field="names",
        )
    if n_boot < 0:
        raise ConfigError(f"n_boot is {n_boot}; use 0 (no bootstrap) or more", field="n_boot")
    ts = parse_thresholds(thresholds)
    out = Path(out)
    _check_out(out, overwrite)
    sources = [
        read_evaluation(Path(f), None if names is None else names[i]) for i, f in enumerate(folders)
    ]
    labels = [s.name for s in sources]
    if len(set(labels)) < len(labels):
        raise ConfigError(
            f"two models are called the same ({', '.join(labels)})",
            field="names",
            hint="name them with --name, once per folder",
        )
    manifests = {s.name: (s.metrics.get("participants") or {}).get("manifest") for s in sources}
    known = {str(Path(m).resolve()) for m in manifests.values() if m}
    if len(known) > 1 and not allow_other_cohorts:
        raise ConfigError(
            "the evaluations are of different manifests: "
            + "; ".join(f"{k}: {v}" for k, v in manifests.items()),
            field="folders",
            hint="evaluate every model on the same cohort (a paired comparison needs the same "
            "cases), or pass --allow-other-cohorts for copies of one cohort",
        )

    # the common cases, outcomes checked
    ids = set(sources[0].predictions["case_id"])
    for s in sources[1:]:
        ids &= set(s.predictions["case_id"])
    common = sorted(ids)
    frames = [s.predictions.set_index("case_id").loc[common] for s in sources]
    y = frames[0]["label"].to_numpy(dtype=float)
    for s, f in zip(sources[1:], frames[1:], strict=True):
        differ = f["label"].to_numpy(dtype=float) != y
        if differ.any():
            case = common[int(np.flatnonzero(differ)[0])]
            raise CohortError(
                f"case {case!r} has outcome {int(y[common.index(case)])} in "
                f"{sources[0].name} but {int(f['label'].loc[case])} in {s.name}",
                field="label",
                path=s.folder / "predictions.csv",
                hint="compare evaluations of the same labelled cohort",
            )
    if len(common) < 2 or len(np.unique(y)) < 2:
        raise CohortError(
            f"{len(common)} case(s) are common to all folders"
            + ("" if len(common) < 2 else ", all with the same outcome")
            + "; a comparison needs events and non-events scored by every model",
            field="case_id",
            hint="evaluate every model on the same cohort",
        )
    dropped = {s.name: int(len(s.predictions) - len(common)) for s in sources}
    risks = {
        s.name: f["p_fusion"].to_numpy(dtype=float) for s, f in zip(sources, frames, strict=True)
    }

    models = []
    for s in sources:
        p = risks[s.name]
        cal = calibration_summary(y, p, level=level)
        auc = delong_ci(y, p, level=level)
        models.append(
            {
                "model": s.name,
                "folder": str(s.folder),
                "n_cases": len(y),
                "n_dropped": dropped[s.name],
                "auroc": auc["value"],
                "auroc_ci_low": auc["ci_low"],
                "auroc_ci_high": auc["ci_high"],
                "brier": cal["brier"],
                "calibration_intercept": cal["intercept"]["value"],
                "calibration_slope": cal["slope"]["value"],
                "oe_ratio": cal["oe_ratio"]["value"],
                **{
                    f"net_benefit_{t:g}": float(v)
                    for t, v in zip(ts, net_benefit(y, p, ts), strict=True)
                },
            }
        )

    ref = sources[0].name
    pairs = []
    for s in sources[1:]:
        d = delong_test(y, risks[ref], risks[s.name], level=level)
        brier = paired_bootstrap(
            y, risks[ref], risks[s.name], _brier, n_boot=n_boot, seed=seed, level=level
        )
        nb = [
            paired_bootstrap(
                y,
                risks[ref],
                risks[s.name],
                _net_benefit_at(t),
                n_boot=n_boot,
                seed=seed,
                level=level,
            )
            for t in ts
        ]
        idi = paired_bootstrap(
            y,
            risks[ref],
            risks[s.name],
            discrimination_slope,
            n_boot=n_boot,
            seed=seed,
            level=level,
        )
        reclass = reclassification(y, risks[ref], risks[s.name], ts)
        both = np.column_stack([risks[ref], risks[s.name]])
        nri_ci: dict[str, tuple[float | None, float | None]] = {}
        for part in ("events", "nonevents", "nri"):
            if n_boot:
                low, high, _ = bootstrap_ci(
                    y,
                    both,
                    _nri_part(ts, part),
                    n_boot=n_boot,
                    seed=seed,
                    level=level,
                    method="resample",
                )
                nri_ci[part] = (low, high)
            else:
                nri_ci[part] = (None, None)
        row: dict[str, Any] = {
            "reference": ref,
            "model": s.name,
            "n_cases": len(y),
            "n_events": int(y.sum()),
            "delta_auroc": d["difference"],
            "delta_auroc_ci_low": d["ci_low"],
            "delta_auroc_ci_high": d["ci_high"],
            "delong_z": d["z"],
            "delong_p": d["p_value"],
            "delta_brier": brier["value"],
            "delta_brier_ci_low": brier["ci_low"],
            "delta_brier_ci_high": brier["ci_high"],
        }
        row["idi"] = idi["value"]
        row["idi_ci_low"], row["idi_ci_high"] = idi["ci_low"], idi["ci_high"]
        for part, key in (("events", "nri_events"), ("nonevents", "nri_nonevents"), ("nri", "nri")):
            row[key] = reclass[key]
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = nri_ci[part]
        row["reclassification"] = reclass["table"]
        for k, t in enumerate(ts):
            row[f"delta_net_benefit_{t:g}"] = nb[k]["value"]
            row[f"delta_net_benefit_{t:g}_ci_low"] = nb[k]["ci_low"]
            row[f"delta_net_benefit_{t:g}_ci_high"] = nb[k]["ci_high"]
        pairs.append(row)
    for row, adj in zip(pairs, holm([r["delong_p"] for r in pairs]), strict=True):
        row["delong_p_holm"] = adj

    comparison = {
        "schema": SCHEMA,
        "clinfuse_version": __version__,
        "reference": ref,
        "models": models,
        "pairs": pairs,
        "n_common_cases": len(common),
        "n_events": int(y.sum()),
        "manifests": manifests,
        "thresholds": ts,
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "sign": "differences are model − reference: ΔAUROC > 0, ΔBrier < 0, "
        "Δnet benefit > 0, IDI > 0 and NRI parts > 0 favour the model",
        # evaluations whose cases include their model's own training or validation cases
        # (their model card says so): their figures, and differences with them, flatter
        "optimistic": {
            s.name: int(n)
            for s in sources
            if (n := (s.metrics.get("case_mix") or {}).get("n_overlap") or 0) > 0
        },
    }
    return _write(out, comparison, y, risks)


def _write(
    out: Path,
    comparison: dict[str, Any],
    y: np.ndarray,
    risks: dict[str, np.ndarray],
) -> ComparisonResult:
    """Write the comparison folder atomically (``out`` was checked by the caller)."""
    from clinfuse._files import atomic_folder
    from clinfuse.evaluation import figures
    from clinfuse.evaluation.calibration import calibration_curve
    from clinfuse.evaluation.report import render_comparison
    from clinfuse.evaluation.utility import decision_curve

    with atomic_folder(out) as tmp:
        level = comparison["level"]
        curves = {name: calibration_curve(y, p, level=level) for name, p in risks.items()}
        figs = {
            "roc": figures.roc_figure(y, {name: (y, p) for name, p in risks.items()}),
            "calibration": figures.calibration_overlay_figure(curves),
            "decision_curve": figures.decision_curve_figure(
                decision_curve(y, risks), float(y.mean()), highlight=comparison["reference"]
            ),
        }
        png = {name: figures.save_figure(fig, tmp / "figures", name) for name, fig in figs.items()}
        models = pd.DataFrame(comparison["models"])
        pairs = pd.DataFrame(comparison["pairs"]).drop(columns="reclassification")
        models.to_csv(tmp / "models.csv", index=False)
        pairs.to_csv(tmp / "pairs.csv", index=False)
        (tmp / "comparison.json").write_text(json.dumps(comparison, indent=2), encoding="utf-8")
        (tmp / "report.html").write_text(render_comparison(comparison, png), encoding="utf-8")
    return ComparisonResult(out=out, comparison=comparison, models=models, pairs=pairs)
