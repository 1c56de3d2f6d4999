"""Cohort-level results for the dashboard's cohort page.

Source, in order of preference:

1. a ``clinfuse evaluate`` output folder (``metrics.json`` + ``predictions.csv``):
   curves are recomputed from its per-case risks, subgroups, ablation and
   robustness tables are read from its ``metrics.json``;
2. otherwise the run's own ``predictions.csv``, test split (validation split when
   the test split lacks an outcome class): curves only.

Curves use :mod:`clinfuse.evaluation` (``calibration_curve``, ``decision_curve``) and
scikit-learn's ``roc_curve``/``roc_auc_score``, so they match the evaluation report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.errors import ConfigError

__all__ = ["CohortResults", "cohort_curves", "load_cohort_results"]


@dataclass
class CohortResults:
    """What the cohort page shows.

    Attributes:
        source: where the numbers come from (one line for the page).
        y: (N,) outcomes; scores: {model: (N,) risks, NaN where the modality is missing}.
        aurocs: {model: AUROC on the cases that model scores}.
        subgroups, ablation, robustness: tables from the evaluation (None without one).
        subgroups_text: the heterogeneity tests of each grouping, one line each.
        case_mix, case_mix_text: the evaluation's comparison with the development data.
        over_time, over_time_text: the evaluation's metrics per calendar period and its
            calibration drift (``clinfuse evaluate --time-column``).
        conformal, conformal_text: the coverage of the conformal sets the evaluation
            checked (``clinfuse evaluate --conformal``).
    """

    source: str
    y: np.ndarray
    scores: dict[str, np.ndarray]
    aurocs: dict[str, float]
    subgroups: pd.DataFrame | None = None
    subgroups_text: str | None = None
    ablation: pd.DataFrame | None = None
    robustness: pd.DataFrame | None = None
    case_mix: pd.DataFrame | None = None
    case_mix_text: str | None = None
    over_time: pd.DataFrame | None = None
    over_time_text: str | None = None
    conformal: pd.DataFrame | None = None
    conformal_text: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.scores)

    @property
    def funnels(self) -> dict[str, dict[str, Any]]:
        """The evaluation's funnel plot data per grouping with two or more reported groups."""
        from clinfuse.evaluation.funnel import drawable_funnels

        return drawable_funnels(self.metrics.get("subgroups"))

    @property
    def n_cases(self) -> int:
        return len(self.y)

    @property
    def n_events(self) -> int:
        return int(np.sum(self.y))


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    ok = ~np.isnan(p)
    if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
        return float("nan")
    return float(roc_auc_score(y[ok], p[ok]))


def _scores(frame: pd.DataFrame, modalities: list[str]) -> dict[str, np.ndarray]:
    out = {"fusion": frame["p_fusion"].to_numpy(float)}
    for m in modalities:
        if f"p_{m}" in frame.columns:
            out[m] = frame[f"p_{m}"].to_numpy(float)
    return out


def _ci(d: Any) -> str:
    if not isinstance(d, dict) or d.get("value") is None:
        return ""
    lo, hi = d.get("ci_low"), d.get("ci_high")
    text = f"{d['value']:.3f}"
    if lo is not None and hi is not None:
        text += f" ({lo:.3f}–{hi:.3f})"
    return text


def _subgroup_table(metrics: dict[str, Any]) -> pd.DataFrame | None:
    groups = metrics.get("subgroups")
    if not isinstance(groups, dict):
        return None
    rows = []
    for column, block in groups.items():
        funnel = _funnel_verdicts(block)
        for g in block.get("groups", []):
            rows.append(
                {
                    "variable": column,
                    "group": g.get("group"),
                    "n_cases": g.get("n_cases"),
                    "n_events": g.get("n_events"),
                    "AUROC (95 % CI)": "suppressed: " + str(g.get("reason", ""))
                    if g.get("suppressed")
                    else _ci(g.get("auroc")),
                    "O/E": "" if g.get("suppressed") else _ci(g.get("oe_ratio")),
                    "funnel": "" if g.get("suppressed") else funnel.get(g.get("group"), ""),
                }
            )
    return pd.DataFrame(rows)


def _funnel_verdicts(block: dict[str, Any]) -> dict[str, str]:
    """Each reported group's place in the funnel plot: "within the limits" or "outside the
    95 % limits (z = +2.10)", and where the additive random-effects limits say otherwise,
    that too."""
    funnel = block.get("funnel") or {}
    random_effects = (funnel.get("dispersion") or {}).get("random_effects")

    def verdict(g: dict[str, Any]) -> str:
        text = (
            f"outside the {g['outside']} limits (z = {g['z']:+.2f})"
            if g["outside"]
            else "within the limits"
        )
        if random_effects and g.get("outside_random_effects") != g["outside"]:
            text += "; with random effects: " + (
                f"outside the {g['outside_random_effects']} limits"
                if g.get("outside_random_effects")
                else "within"
            )
        return text

    return {g["group"]: verdict(g) for g in funnel.get("groups", [])}


def _heterogeneity_text(metrics: dict[str, Any]) -> str | None:
    """One line per grouping: do its reported groups differ more than chance allows?"""
    groups = metrics.get("subgroups")
    if not isinstance(groups, dict):
        return None
    lines = []
    for column, block in groups.items():
        het = block.get("heterogeneity") or {}
        parts = []
        if het.get("auroc"):
            a = het["auroc"]
            parts.append(f"AUROC Q = {a['q']:.2f} (df {a['df']}, p = {a['p_value']:.3g})")
        if het.get("calibration_in_the_large"):
            c = het["calibration_in_the_large"]
            parts.append(
                f"calibration-in-the-large LR = {c['lr']:.2f} (df {c['df']}, p = {c['p_value']:.3g})"
            )
        if parts:
            lines.append(f"{column}: " + "; ".join(parts))
    if not lines:
        return None
    return "Do the groups differ more than chance allows? " + " · ".join(lines)


def _ablation_table(metrics: dict[str, Any]) -> pd.DataFrame | None:
    block = metrics.get("ablation")
    if not isinstance(block, dict) or not block.get("rows"):
        return None
    return pd.DataFrame(
        [
            {
                "modalities": r.get("name"),
                "AUROC (95 % CI)": _ci(r.get("auroc")),
                "AUPRC": _ci(r.get("auprc")),
                "Δ AUROC vs all": _difference(r.get("vs_all")),
            }
            for r in block["rows"]
        ]
    )


def _difference(d: Any) -> str:
    if not isinstance(d, dict) or d.get("difference") is None:
        return ""
    text = f"{d['difference']:+.3f}"
    if d.get("p_value") is not None:
        text += f" (DeLong p={d['p_value']:.2f})"
    return text


def _robustness_table(metrics: dict[str, Any]) -> pd.DataFrame | None:
    block = metrics.get("robustness")
    if not isinstance(block, dict) or not block.get("rows"):
        return None
    return pd.DataFrame(
        [
            {
                "removed": r.get("removed"),
                "n_cases": r.get("n_cases"),
                "AUROC full": _ci(r.get("auroc_full")),
                "AUROC without": _ci(r.get("auroc_without")),
            }
            for r in block["rows"]
        ]
    )


def _over_time_table(metrics: dict[str, Any]) -> tuple[pd.DataFrame | None, str | None]:
    from clinfuse.evaluation.cusum import describe_change, first_signals
    from clinfuse.evaluation.segments import describe_segments

    block = metrics.get("over_time")
    if not isinstance(block, dict):
        return None, None
    table = pd.DataFrame(
        [
            {
                block["period"]: r["period"],
                "n_cases": r["n"],
                "n_events": r["n_events"],
                "O/E (95 % CI)": "suppressed" if r["suppressed"] else _ci(r.get("oe")),
                "AUROC (95 % CI)": "" if r["suppressed"] else _ci(r.get("auroc")),
            }
            for r in block.get("periods", [])
        ]
    )
    drift = (block.get("drift") or {}).get("per_year") or {}
    if drift.get("value") is None:
        text = f"Calibration drift over {block['column']}: undefined."
    else:
        text = (
            f"Calibration drift over {block['column']}: the outcome's log odds change by "
            f"{drift['value']:+.2f} per year beyond the model's risks (95 % CI "
            f"{drift['ci_low']:+.2f} to {drift['ci_high']:+.2f}, p = {drift['p_value']:.3g})."
        )
    for chart in (block.get("cusum") or {}).get("charts", []):
        if chart["n_signals"]:
            first = chart["signals"][0]
            text += (
                f" Risk-adjusted CUSUM, {chart['direction']}: {chart['n_signals']} signal(s), the "
                f"first on {first['date']} after a climb that began {first['since']} "
                f"({first['observed']} events observed, {first['expected']:.1f} expected)"
                + (f"; {describe_change(first)}." if "change" in first else ".")
            )
        else:
            text += f" Risk-adjusted CUSUM, {chart['direction']}: no signal."
    for site, chart, first in first_signals(block.get("cusum_by_site")):
        text += f" At site {site}, {chart['direction']}: first signal {first['date']}" + (
            f"; {describe_change(first)}." if "change" in first else "."
        )
    segments = block.get("segments") or {}
    if segments.get("n_changes") == 0:
        text += " Calibration segments: no change (one odds ratio fits the whole span best)."
    elif segments.get("n_changes"):
        text += " " + str(describe_segments(segments, block["column"]))
    for site, result in ((block.get("segments_by_site") or {}).get("groups") or {}).items():
        sentence = describe_segments(result, block["column"])
        if sentence:
            text += f" At site {site}: {sentence[0].lower()}{sentence[1:]}"
    return table, text


def _conformal_table(metrics: dict[str, Any]) -> tuple[pd.DataFrame | None, str | None]:
    block = metrics.get("conformal")
    if not isinstance(block, dict):
        return None, None
    cov = block["coverage"]
    rows = [
        {"cases": label, "n": cov[key]["n"], "coverage (95 % CI)": _ci(cov[key])}
        for key, label in (("events", "events"), ("non_events", "non-events"), ("overall", "all"))
    ]
    share = block["singletons"]["share"]
    text = block["description"] + (
        f" On these cases {100 * share:.1f} % got a single outcome." if share is not None else ""
    )
    return pd.DataFrame(rows), text


def _case_mix_table(metrics: dict[str, Any]) -> tuple[pd.DataFrame | None, str | None]:
    cm = metrics.get("case_mix")
    if not isinstance(cm, dict):
        return None, None
    dev, ev = cm.get("development", {}), cm.get("evaluated", {})

    def pct(x: Any) -> str:
        return "" if x is None else f"{100 * x:.1f} %"

    def num(x: Any) -> str:
        return "" if x is None else f"{x:.2f}"

    rows = [
        ("cases", str(dev.get("n_cases", "")), str(ev.get("n_cases", ""))),
        ("outcome rate", pct(dev.get("outcome_rate")), pct(ev.get("outcome_rate"))),
        ("fused logit, mean", num(dev.get("logit_mean")), num(ev.get("logit_mean"))),
        ("fused logit, SD", num(dev.get("logit_sd")), num(ev.get("logit_sd"))),
    ]
    for m, v in ev.get("availability", {}).items():
        rows.append((f"with {m}", pct(dev.get("availability", {}).get(m)), pct(v)))
    for r in cm.get("tabular", []):
        if r.get("kind") == "numeric" and r.get("flagged"):
            rows.append(
                (
                    f"{r['column']} mean (SMD {r['smd']:+.2f})",
                    num(r.get("development_mean")),
                    num(r.get("mean")),
                )
            )
        elif r.get("n_unseen_levels"):
            rows.append(
                (
                    f"{r['column']}: cases with a level never seen",
                    "",
                    f"{r['n_cases_unseen']} ({r['n_unseen_levels']} levels)",
                )
            )
    table = pd.DataFrame(rows, columns=["", "development", "this cohort"])
    return table, cm.get("interpretation")


def scored_case_mix_table(view: Any) -> tuple[pd.DataFrame | None, str | None]:
    """The case-mix table and its reading for a scored cohort (``(None, None)`` for the
    run's own cases; ``(None, what to do)`` when a fold ensemble's table lacks its fold
    models' outputs)."""
    if view.scored is None:
        return None, None
    cm = view.scored_case_mix()
    if cm is not None:
        return _case_mix_table({"case_mix": cm})
    if view.ensemble and view.fold_models is None:
        return None, (
            "The comparison with the development data needs each fold model's outputs for "
            "these cases, which `clinfuse predict` now writes beside the table: "
            f"rescore them with `clinfuse predict {view.run} MANIFEST --out {view.scored}`."
        )
    return None, None


def monitoring_table(view: Any) -> tuple[pd.DataFrame | None, str | None]:
    """The ``clinfuse monitor`` folder of a scored cohort as a table (one row per compared
    period: cases, mean risk, the fused PSI, each modality's availability, the flags) and one
    line of reading; ``(None, None)`` without one."""
    if getattr(view, "monitoring", None) is None:
        return None, None
    s = json.loads((view.monitoring / "monitoring.json").read_text(encoding="utf-8"))
    mods = list(s["development"]["availability"])
    rows = [
        {
            s["period"]: r["period"],
            "cases": r["n"],
            "mean risk": f"{100 * r['mean_risk']:.1f} %",
            "PSI fused": round(r["psi_fusion"]["value"], 2),
            **{f"with {m}": f"{100 * r['availability'][m]['value']:.0f} %" for m in mods},
            "flags": "; ".join(r["flags"]),
        }
        for r in s["periods"]
        if not r["suppressed"]
    ]
    dev = s["development"]
    compared = len(rows)
    text = (
        f"{s['n_dated']} scored cases by {s['period']} of {s['column']}, each {s['period']} "
        f"with at least {s['min_size']} cases against the {dev['n']} development cases "
        f"(mean risk {100 * dev['mean_risk']:.1f} %; "
        + ", ".join(f"{m} in {100 * dev['availability'][m]:.0f} %" for m in mods)
        + f"). {s['n_flagged_periods']} of {compared} compared {s['period']}s flagged: a change "
        "large enough to matter and unlikely by chance (Holm-adjusted p < 0.01)."
    )
    return pd.DataFrame(rows), text


def monitoring_site_table(view: Any) -> tuple[pd.DataFrame | None, str | None]:
    """The monitoring folder's comparison by site (one row per compared site: its cases, its
    reference, its compared and flagged periods, the flags) and one line of reading;
    ``(None, None)`` without a monitoring folder or without two sites."""
    if getattr(view, "monitoring", None) is None:
        return None, None
    s = json.loads((view.monitoring / "monitoring.json").read_text(encoding="utf-8"))
    by = s.get("by_site")
    if not by:
        return None, None
    from clinfuse.evaluation.monitor import site_flags

    rows = []
    for e in by["sites"]:
        rows.append(
            {
                "site": e["site"],
                "cases": e["n"],
                "compared with": (
                    f"its own {e['n_reference']} development cases"
                    if e["reference"] == "site"
                    else f"all {e['n_reference']} development cases"
                ),
                f"{s['period']}s compared": sum(1 for r in e["periods"] if not r["suppressed"]),
                "flagged": e["n_flagged_periods"],
                "flags": " · ".join(site_flags(e)),
            }
        )
    text = (
        f"Each site's {s['period']}s against its own development cases, so a feed or assay "
        f"that changed at one site is not diluted among the others: {by['n_flagged_periods']} "
        f"site {s['period']}s flagged (Holm-adjusted across every site's {s['period']}s)."
    )
    if by["left_out"]:
        text += " Not compared (fewer than {} dated cases): {}.".format(
            s["min_size"], ", ".join(f"{x['site']} ({x['n']})" for x in by["left_out"])
        )
    return pd.DataFrame(rows), text


def load_cohort_results(view: Any) -> CohortResults:
    """Results for the cohort page of a :class:`~clinfuse.review.runview.RunView`.

    Raises:
        ConfigError: no labelled cases with both outcomes to show curves for.
    """
    ev = view.evaluation
    if ev is not None and (ev / "metrics.json").exists() and (ev / "predictions.csv").exists():
        metrics = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))
        frame = pd.read_csv(ev / "predictions.csv", dtype={"case_id": str})
        frame = frame[frame["label"].notna()]
        y = frame["label"].to_numpy(float)
        scores = _scores(frame, view.modalities)
        case_mix, case_mix_text = _case_mix_table(metrics)
        over_time, over_time_text = _over_time_table(metrics)
        conformal, conformal_text = _conformal_table(metrics)
        return CohortResults(
            source=f"evaluation: {ev} ({len(frame)} cases)",
            y=y,
            scores=scores,
            aurocs={m: _auroc(y, p) for m, p in scores.items()},
            subgroups=_subgroup_table(metrics),
            subgroups_text=_heterogeneity_text(metrics),
            ablation=_ablation_table(metrics),
            robustness=_robustness_table(metrics),
            case_mix=case_mix,
            case_mix_text=case_mix_text,
            over_time=over_time,
            over_time_text=over_time_text,
            conformal=conformal,
            conformal_text=conformal_text,
            metrics=metrics,
        )
    f = view.predictions

    def curves_of(part: pd.DataFrame, source: str) -> CohortResults | None:
        """Curves from labelled cases, when both outcomes are among them."""
        if len(part) < 2 or part["label"].nunique() != 2:
            return None
        y = part["label"].to_numpy(float)
        scores = _scores(part, view.modalities)
        aurocs = {m: _auroc(y, p) for m, p in scores.items()}
        table, text = scored_case_mix_table(view)
        return CohortResults(
            source=source, y=y, scores=scores, aurocs=aurocs, case_mix=table, case_mix_text=text
        )

    if view.scored is not None:
        part = f[f["label"].notna()] if "label" in f.columns else f.iloc[:0]
        res = curves_of(
            part,
            f"scored cases with an outcome ({len(part)} of {len(f)}); for subgroups and the "
            "modality ablation run `clinfuse evaluate` on the cohort and pass --evaluation",
        )
        if res is not None:
            return res
        raise ConfigError(
            "the scored cases have no outcomes of both kinds yet: nothing to draw curves from",
            path=view.scored,
            hint="when outcomes are known, run `clinfuse evaluate` on the cohort and pass "
            "--evaluation",
        )
    if "label" not in f.columns:
        raise ConfigError("the run's predictions have no outcome labels", path=view.run)
    for split in ("test", "val"):
        part = f[(f["split"] == split) & f["label"].notna()]
        res = curves_of(
            part,
            f"run predictions, {split} split ({len(part)} cases); for subgroups and the "
            "modality ablation run `clinfuse evaluate` and pass --evaluation",
        )
        if res is not None:
            return res
    raise ConfigError(
        "no split of the run has labelled cases with both outcomes",
        path=view.run / "predictions.csv",
    )


def cohort_curves(res: CohortResults, models: list[str]) -> dict[str, Any]:
    """ROC points per model, the fused risk's calibration curve, decision curves."""
    from sklearn.metrics import roc_curve

    from clinfuse.evaluation.calibration import calibration_curve
    from clinfuse.evaluation.utility import decision_curve

    roc = {}
    for m in models:
        p = res.scores[m]
        ok = ~np.isnan(p)
        if ok.sum() >= 2 and len(np.unique(res.y[ok])) == 2:
            fpr, tpr, _ = roc_curve(res.y[ok], p[ok])
            roc[m] = (fpr, tpr)
    fused = res.scores["fusion"]
    calib = calibration_curve(res.y, fused) if len(np.unique(res.y)) == 2 else None
    complete = np.all([~np.isnan(res.scores[m]) for m in models], axis=0)
    dca = decision_curve(res.y[complete], {m: res.scores[m][complete] for m in models})
    return {"roc": roc, "calibration": calib, "dca": dca}
