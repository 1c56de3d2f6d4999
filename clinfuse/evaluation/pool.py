"""``clinfuse pool-evaluations``: one model's evaluations at several sites, combined.

When every site keeps its data (a federation with site-local manifests), no host can
evaluate the model on the pooled test cases. Each site runs ``clinfuse evaluate`` on its
own cases and shares its ``metrics.json`` (aggregates only). This module combines them as a
multi-site external validation is reported (Debray et al., BMJ 2017;356:i6460; Riley et al.,
BMJ 2016;353:i3140): per site the fused model's AUROC with its DeLong interval, the O/E
ratio and the calibration slope; across sites their random-effects summaries
(:mod:`clinfuse.evaluation.meta`: DerSimonian–Laird τ², I², the 95 % prediction interval for
a new site), and the same AUROC summary for every modality's own model.

Outputs in ``--out`` (written atomically)::

    pooled.json        schema clinfuse.pooled_evaluation.v1: the sites, the model, each
                       site's row, the random-effects summaries (fusion and every modality)
    sites.csv          one row per site
    figures/forest_auroc.png|svg   each site's AUROC (DeLong CI) and the summary

The evaluations must be of the same model (``metrics.json → run.model_sha256``) at the same
interval level; a site may be given under its own name (``names``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import norm

from clinfuse._files import read_json_object
from clinfuse.errors import ConfigError

__all__ = ["POOLED_SCHEMA", "PooledResult", "pool_evaluations", "site_row"]

POOLED_SCHEMA = "clinfuse.pooled_evaluation.v1"
"""``pooled.json → schema``."""

_EVALUATION_SCHEMA = "clinfuse.evaluation.v1"


@dataclass
class PooledResult:
    """What :func:`pool_evaluations` wrote: the folder and ``pooled.json``'s content."""

    out: Path
    pooled: dict[str, Any]


def site_row(site: str, metrics: dict[str, Any], model: str = "fusion") -> dict[str, Any]:
    """One site's figures from its ``metrics.json`` (the rows the meta-analysis pools).

    ``calibration_slope_se`` is the slope's interval width over 2·z (its interval is a
    Wald interval); ``expected_events`` is the sum of predicted risks.
    """
    disc = metrics["discrimination"]["models"].get(model) or {}
    auc = disc.get("auroc_delong") or {}
    row: dict[str, Any] = {
        "group": site,
        "model": model,
        "n_cases": int(disc.get("n_cases", metrics.get("n_cases", 0))),
        "n_events": int(disc.get("n_events", metrics.get("n_events", 0))),
        "auroc": auc.get("value"),
        "auroc_ci_low": auc.get("ci_low"),
        "auroc_ci_high": auc.get("ci_high"),
        "auroc_se": auc.get("se"),
    }
    cal = (metrics.get("calibration") or {}).get(model)
    if cal is None:
        return row
    z = float(norm.ppf(1 - (1 - float(metrics.get("level", 0.95))) / 2))
    slope = cal.get("slope") or {}
    width = (
        None
        if slope.get("ci_low") is None or slope.get("ci_high") is None
        else slope["ci_high"] - slope["ci_low"]
    )
    oe = cal.get("oe_ratio") or {}
    return row | {
        "calibration_intercept": (cal.get("intercept") or {}).get("value"),
        "calibration_slope": slope.get("value"),
        "calibration_slope_se": None if width is None else width / (2 * z),
        "oe_ratio": oe.get("value"),
        "expected_events": oe.get("expected"),
        "brier": cal.get("brier"),
    }


def _read(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    if not path.is_file():
        raise ConfigError(
            "no metrics.json here: not an evaluation folder",
            path=folder,
            hint="pass the --out folders of each site's clinfuse evaluate",
        )
    metrics = read_json_object(path, "the evaluation's metrics.json")
    if metrics.get("schema") != _EVALUATION_SCHEMA:
        raise ConfigError(
            f"metrics.json has schema {metrics.get('schema')!r}, expected {_EVALUATION_SCHEMA}",
            path=path,
            hint="evaluate with this clinfuse version",
        )
    return metrics


def pool_evaluations(
    folders: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    allow_other_models: bool = False,
    overwrite: bool = False,
) -> PooledResult:
    """Combine several sites' evaluations of one model (see the module docstring).

    Args:
        folders: each site's ``clinfuse evaluate`` output folder.
        out: the folder to write.
        names: a name per folder (default: the folder names).
        allow_other_models: pool evaluations of different models (e.g. each site's
            recalibrated copy); the summary then describes a family of models.
        overwrite: replace a non-empty ``out``.

    Raises:
        ConfigError: fewer than two folders, a folder without an evaluation, names that
            do not match, evaluations of other models or at other interval levels.
    """
    from clinfuse._files import atomic_folder
    from clinfuse.evaluation import figures
    from clinfuse.evaluation.evaluate import _check_out
    from clinfuse.evaluation.meta import auroc_meta_analysis, group_meta_analysis

    paths = [Path(f) for f in folders]
    if len(paths) < 2:
        raise ConfigError(
            "pooling needs the evaluations of at least two sites", hint="pass every site's folder"
        )
    labels = list(names) if names else [p.name for p in paths]
    if len(labels) != len(paths) or len(set(labels)) != len(labels):
        raise ConfigError(
            f"{len(labels)} names for {len(paths)} folders ({', '.join(labels)}); give one "
            "distinct --name per folder",
            field="name",
        )
    out = Path(out)
    _check_out(out, overwrite)
    evaluations = {label: _read(p) for label, p in zip(labels, paths, strict=True)}
    models = {s: (m.get("run") or {}).get("model_sha256") for s, m in evaluations.items()}
    if len(set(models.values())) > 1 and not allow_other_models:
        detail = ", ".join(f"{s}: {str(h)[:12]}" for s, h in models.items())
        raise ConfigError(
            f"the evaluations are of different models ({detail})",
            field="model_sha256",
            hint="evaluate the same run folder at every site, or pass --allow-other-models",
        )
    levels = {float(m.get("level", 0.95)) for m in evaluations.values()}
    if len(levels) > 1:
        raise ConfigError(
            f"the evaluations use different interval levels ({sorted(levels)})",
            field="level",
            hint="evaluate every site at the same level",
        )
    level = levels.pop()
    rows = [site_row(s, m) for s, m in evaluations.items()]
    modalities = sorted(
        {k for m in evaluations.values() for k in m["discrimination"]["models"]} - {"fusion"}
    )
    by_model: dict[str, Any] = {}
    for model in modalities:
        usable = [
            site_row(s, m, model)
            for s, m in evaluations.items()
            if model in m["discrimination"]["models"]
        ]
        usable = [
            r for r in usable if r["auroc"] is not None and 0 < r["auroc"] < 1 and r["auroc_se"]
        ]
        if len(usable) >= 2:
            by_model[model] = auroc_meta_analysis(
                [r["auroc"] for r in usable], [r["auroc_se"] for r in usable], level=level
            ) | {"groups": [r["group"] for r in usable]}
    pooled = {
        "schema": POOLED_SCHEMA,
        "level": level,
        "sites": labels,
        "folders": [str(p.resolve()) for p in paths],
        "model_sha256": models,
        "n_cases": sum(r["n_cases"] for r in rows),
        "n_events": sum(r["n_events"] for r in rows),
        "per_site": rows,
        "meta_analysis": group_meta_analysis(rows, level),
        "modalities": by_model,
        "note": "random-effects (DerSimonian–Laird) summaries of the sites' own evaluations: "
        "AUROC on the logit scale with DeLong standard errors, O/E on the log scale, the "
        "calibration slope as it is; the prediction interval is where a new site's value is "
        "expected to fall",
    }
    forest = {
        "per_fold": [{**r, "fold": i + 1} for i, r in enumerate(rows)],
        "meta_analysis": pooled["meta_analysis"],
        "across_folds": {"auroc": {"mean": None}},
    }
    with atomic_folder(out) as tmp:
        fig = figures.forest_figure(forest, title="AUROC by site", by="group")
        figures.save_figure(fig, tmp / "figures", "forest_auroc")
        pd.DataFrame(rows).drop(columns="model").rename(columns={"group": "site"}).to_csv(
            tmp / "sites.csv", index=False
        )
        (tmp / "pooled.json").write_text(json.dumps(pooled, indent=2), encoding="utf-8")
    return PooledResult(out=out, pooled=pooled)
