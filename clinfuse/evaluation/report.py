"""The self-contained ``report.html`` of an evaluation (figures embedded as base64 PNG).

Each section carries the TRIPOD+AI items it answers (Collins et al., BMJ
2024;385:e078378). Every value shown comes from ``metrics.json``; the page has
no script and loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TRIPOD_ITEMS", "render_comparison", "render_report"]

TRIPOD_ITEMS: dict[str, list[str]] = {
    "participants": ["9", "20a", "20b", "21"],
    "missing": ["11", "20b", "27a"],
    "case_mix": ["20c"],
    "methods": ["12e", "12g", "15"],
    "crossval": ["12a", "12c", "23a"],
    "discrimination": ["12e", "23a"],
    "calibration": ["12e", "12f", "23a"],
    "utility": ["12e", "15", "23a"],
    "conformal": ["12e", "23a"],
    "over_time": ["12e", "23a"],
    "risk": ["15", "23a"],
    "subgroups": ["14", "23a"],
    "sites": ["12d", "23b"],
    "fusion": ["11", "27a"],
    "model_card": ["22", "25", "26", "27b"],
}
"""TRIPOD+AI checklist items per report section."""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1050px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
.tripod{font-size:.7em;font-weight:normal;background:#eef3fb;color:#1f4e8c;border-radius:4px;
padding:2px 6px;margin-left:.6em;vertical-align:middle}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
tr.gap td{background:#fff3cd;font-weight:bold}tr.suppressed td{color:#999;font-style:italic}
img{max-width:100%;height:auto}.figs{display:flex;flex-wrap:wrap;gap:1em}
.figs figure{margin:0;flex:1 1 420px}figcaption{font-size:.85em;color:#555}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _e(v)


def _ci(
    block: dict[str, Any] | None, digits: int = 3, lo: str = "ci_low", hi: str = "ci_high"
) -> str:
    if not block or block.get("value") is None:
        return "undefined"
    text = _num(block["value"], digits)
    if block.get(lo) is not None and block.get(hi) is not None:
        text += f" ({_num(block[lo], digits)}–{_num(block[hi], digits)})"
    return text


def _pval(p: Any) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p(p: Any) -> str:
    """A p-value in running text: ``p = 0.042`` or ``p < 0.001``."""
    text = _pval(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()
) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        cls = classes[k] if k < len(classes) and classes[k] else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        out.extend(f"<td>{c}</td>" for c in row)
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _section(title: str, key: str, body: str) -> str:
    items = ", ".join(TRIPOD_ITEMS[key])
    return (
        f'<section id="{key}"><h2>{_e(title)}<span class="tripod" title="TRIPOD+AI checklist items">'
        f"TRIPOD+AI {items}</span></h2>{body}</section>"
    )


def _figure(png: dict[str, bytes], name: str, caption: str) -> str:
    if name not in png:
        return ""
    data = base64.b64encode(png[name]).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)} (also figures/{name}.png, .svg)</figcaption></figure>"
    )


def _participants(m: dict[str, Any]) -> str:
    part = m["participants"]
    rows = [
        ["cases evaluated", part["n_evaluated"]],
        ["events", f"{part['n_events']} ({100 * part['prevalence']:.1f} %)"],
        ["cases excluded", part["n_excluded"]],
    ]
    rows += [[f"excluded for {_e(f)}", n] for f, n in part["exclusions_by_field"].items()]
    rows += [[f"site {_e(s)}", n] for s, n in part["sites"].items()]
    body = f"<p>Manifest: <code>{_e(part['manifest'])}</code>"
    body += f", split {_e(part['split'])}</p>" if part["split"] else "</p>"
    body += _table(["", "n"], rows)
    body += "<p>Exclusions are listed case by case, with reasons, in <code>excluded.csv</code>.</p>"
    need = m.get("sample_size")
    if need:
        parts = "; ".join(f"{_e(r['criterion'])} {r['n']:,}" for r in need["criteria"])
        verdict = (
            "this cohort meets them"
            if part["n_evaluated"] >= need["n"]
            else f"this cohort has {part['n_evaluated']:,}: the intervals below are wider"
        )
        body += (
            "<p><b>Sample size.</b> For 95 % CI widths of 0.2 (O/E, calibration slope) and 0.1 "
            "(C-statistic) at this cohort's prevalence, C-statistic and risk distribution, "
            f"Riley et al.'s criteria (Stat Med 2021) ask for {need['n']:,} cases ({parts}); "
            f"{verdict}. Plan a validation with <code>clinfuse samplesize</code>.</p>"
        )
    return body


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _case_mix(m: dict[str, Any]) -> str:
    cm = m["case_mix"]
    dev, ev = cm["development"], cm["evaluated"]
    rows = [
        ["cases", dev["n_cases"], ev["n_cases"]],
        ["outcome rate", _pct(dev["outcome_rate"]), _pct(ev["outcome_rate"])],
        ["fused logit, mean", _num(dev["logit_mean"], 2), _num(ev["logit_mean"], 2)],
        ["fused logit, SD", _num(dev["logit_sd"], 2), _num(ev["logit_sd"], 2)],
    ]
    rows += [
        [f"with {_e(k)}", _pct(dev["availability"].get(k)), _pct(v)]
        for k, v in ev["availability"].items()
    ]
    body = f"<p>{_e(cm['interpretation'])}</p>"
    development = (
        "development (out of fold)" if cm.get("fold_models") else "development (train + val)"
    )
    body += _table(["", development, "this cohort"], rows)
    if cm["n_overlap"]:
        body += (
            f"<p>{cm['n_overlap']} evaluated cases are also development cases; they are left out "
            "of the development side.</p>"
        )
    mem = cm["membership"]
    if mem and mem["coefficients"]:
        body += (
            "<p>Membership model (L2 logistic regression on standardised inputs; positive: more "
            f"typical of this cohort), apparent c = {mem['c_statistic']:.3f}:</p>"
        )
        body += _table(
            ["input", "coefficient"], [[_e(k), f"{v:+.2f}"] for k, v in mem["coefficients"].items()]
        )
    numeric = [r for r in cm["tabular"] if r["kind"] == "numeric"]
    if numeric:
        body += "<p>Tabular inputs against the training split (|SMD| > 0.1 in bold):</p>"
        body += _table(
            ["input", "development mean (SD)", "this cohort mean (SD)", "missing", "SMD"],
            [
                [
                    _e(r["column"]),
                    f"{_num(r['development_mean'], 2)} ({_num(r['development_sd'], 2)})",
                    f"{_num(r['mean'], 2)} ({_num(r['sd'], 2)})",
                    _pct(r["missing_fraction"]),
                    f"<b>{_num(r['smd'], 2)}</b>" if r["flagged"] else _num(r["smd"], 2),
                ]
                for r in numeric
            ],
        )
    unseen = [r for r in cm["tabular"] if r["kind"] == "categorical" and r["n_unseen_levels"]]
    for r in unseen:
        body += (
            f"<p><code>{_e(r['column'])}</code>: {r['n_cases_unseen']} cases hold one of "
            f"{r['n_unseen_levels']} levels never seen in development (the model treats them as "
            "missing; the levels are not listed here).</p>"
        )
    return body


def _missing(m: dict[str, Any]) -> str:
    av = m["participants"]["availability"]
    n = m["participants"]["n_evaluated"] or 1
    body = _table(
        ["modality", "cases with it", "%"],
        [[_e(k), v, f"{100 * v / n:.1f}"] for k, v in av["per_modality"].items()],
    )
    body += "<p>Modality-availability patterns (how many cases have which subset):</p>"
    body += _table(
        ["modalities present", "cases", "%"],
        [
            [_e(r["modalities"]), r["n_cases"], f"{100 * r['n_cases'] / n:.1f}"]
            for r in av["patterns"]
        ],
    )
    body += (
        "<p>A missing modality is not imputed: the late-fusion model combines the modalities "
        "present. See the robustness table for what each missing modality costs.</p>"
    )
    return body


def _methods(m: dict[str, Any], thresholds: Sequence[float]) -> str:
    return (
        "<ul>"
        f"<li>Discrimination: AUROC with DeLong {int(100 * m['level'])} % CI (Sun &amp; Xu fast "
        f"algorithm) and percentile bootstrap CI ({m['n_boot']} replicates, seed {m['seed']}); "
        "AUPRC and Brier with bootstrap CIs; paired DeLong test fused vs each modality on the "
        "cases that have the modality.</li>"
        "<li>Calibration: intercept (calibration-in-the-large, logit offset) and slope by "
        "logistic recalibration; O/E with a Poisson interval; Brier and scaled Brier; flexible "
        "calibration curve (restricted cubic spline logistic regression, pointwise Wald band); "
        "ECE (10 equal-width bins) as a secondary measure. No recalibration was applied to the "
        "evaluated risks beyond the run's own calibrator (and its site update, for a run written "
        "by <code>clinfuse recalibrate</code>).</li>"
        "<li>Clinical utility: net benefit over thresholds 0.01–0.99 against treat-all and "
        "treat-none; sensitivity, specificity, PPV, NPV with Wilson CIs at thresholds "
        f"{', '.join(f'{t:g}' for t in thresholds)} (a case is flagged when its risk ≥ "
        "threshold; thresholds chosen by the user).</li>"
        "<li>Model output: calibrated probability of the outcome "
        "(<code>p_fusion</code> in <code>predictions.csv</code>), computed with "
        "<code>clinfuse.load_run(run).predict</code>"
        + (
            "; out-of-fold: each case scored by the fold model that did not see its patient "
            "(<code>fold</code> column)"
            if m.get("crossval")
            else ""
        )
        + ".</li></ul>"
    )


def _crossval(m: dict[str, Any], png: dict[str, bytes]) -> str:
    cv = m["crossval"]
    k = cv["folds"]
    grouped = cv.get("design") == "leave-one-group-out"
    dealt = (
        f"{cv['n_patients']} patients ({cv['n_cases']} cases) grouped by "
        f"<code>{_e(cv['group_by'])}</code> into {k} folds, one per value (internal–external "
        "cross-validation: each group is predicted by a model that never saw it)"
        if grouped
        else f"{cv['n_patients']} patients ({cv['n_cases']} cases) dealt to {k} folds, "
        f"stratified by {' and '.join(cv['stratified_by'])} (fold seed {cv['fold_seed']})"
    )
    body = (
        f"<p>Every patient was held out once: {dealt}. For each fold a complete run was trained on the other "
        f"folds (their patients split into training and validation, "
        f"{100 * cv['inner_validation_share']:.0f} % validation for early stopping, the "
        "fusion combiner and calibration) and predicted the held-out fold. The sections "
        "below evaluate the pooled out-of-fold predictions of the fold models; the table "
        "gives each fold alone. The figures describe the training procedure on new patients "
        "of the same population; the model to use is trained on all cases.</p>"
    )
    if cv.get("fold_configs") == "chosen per fold":
        body += (
            "<p>Nested cross-validation: each fold's config was chosen by a hyperparameter "
            "search (<code>clinfuse tune</code>) cross-validated on that fold's training "
            "cases only, so the held-out fold played no part in the choice. The figures "
            "describe the whole procedure, search included.</p>"
        )
    rows = [
        [
            f"{r['fold']}: {_e(r['group'])}" if grouped else r["fold"],
            r["n_cases"],
            r["n_events"],
            _ci({"value": r["auroc"], "ci_low": r["auroc_ci_low"], "ci_high": r["auroc_ci_high"]}),
            _num(r["calibration_intercept"], 2),
            _num(r["calibration_slope"], 2),
            _num(r["brier"]),
        ]
        for r in cv["per_fold"]
    ]
    across = cv["across_folds"]

    def spread(key: str, digits: int) -> str:
        a = across[key]
        if a["mean"] is None:
            return "—"
        sd = "" if a["sd"] is None else f" ± {_num(a['sd'], digits)}"
        return f"{_num(a['mean'], digits)}{sd}"

    rows.append(
        [
            "mean ± SD",
            "",
            "",
            spread("auroc", 3),
            spread("calibration_intercept", 2),
            spread("calibration_slope", 2),
            spread("brier", 3),
        ]
    )
    body += _table(
        ["fold", "cases", "events", "AUROC (DeLong CI)", "cal. intercept", "cal. slope", "Brier"],
        rows,
    )
    models = ", ".join(f"fold {f['fold']}: {f['epochs_run']} epochs" for f in cv["fold_models"])
    meta = cv.get("meta_analysis") or {}
    if "auroc" in meta:
        a = meta["auroc"]
        pi = (
            f"; 95 % prediction interval for a new {_e(cv['group_by'])} "
            f"{_num(a['pi_low'])}–{_num(a['pi_high'])}"
            if a["pi_low"] is not None
            else " (a prediction interval needs at least 3 groups)"
        )
        body += (
            f"<p><b>Random-effects meta-analysis</b> over the {a['k']} groups (DerSimonian–Laird, "
            f"logit scale): summary AUROC {_num(a['estimate'])} (95 % CI {_num(a['ci_low'])}–"
            f"{_num(a['ci_high'])}){pi}; τ² {_num(a['tau2'], 4)}, I² {100 * a['i2']:.0f} %, "
            f"heterogeneity {_p(a['q_p_value'])}."
        )
        if "calibration_slope" in meta:
            c = meta["calibration_slope"]
            body += (
                f" Calibration slope {_num(c['estimate'], 2)} (95 % CI {_num(c['ci_low'], 2)}–"
                f"{_num(c['ci_high'], 2)}"
                + (
                    f"; prediction interval {_num(c['pi_low'], 2)}–{_num(c['pi_high'], 2)}"
                    if c["pi_low"] is not None
                    else ""
                )
                + f"), I² {100 * c['i2']:.0f} %."
            )
        if "oe_ratio" in meta:
            o = meta["oe_ratio"]
            body += (
                f" O/E ratio {_num(o['estimate'], 2)} (95 % CI {_num(o['ci_low'], 2)}–"
                f"{_num(o['ci_high'], 2)}"
                + (
                    f"; prediction interval {_num(o['pi_low'], 2)}–{_num(o['pi_high'], 2)}"
                    if o["pi_low"] is not None
                    else ""
                )
                + f"; log scale), I² {100 * o['i2']:.0f} %."
            )
        body += "</p>"
    body += (
        f"<p>Fold models (<code>folds/fold_k</code>): {_e(models)}. Pooled and fold-by-fold "
        "figures answer different questions: the pooled AUROC ranks cases scored by different "
        "models; the fold mean and SD show how much one split's figure varies.</p>"
    )
    body += f'<div class="figs">{_figure(png, "folds", "AUROC by held-out fold")}</div>'
    return body


def _discrimination(m: dict[str, Any], png: dict[str, bytes]) -> str:
    rows = []
    for name, block in m["models"].items():
        d = m["discrimination"]["models"][name]
        rows.append(
            [
                _e(name),
                block["n_cases"],
                block["n_events"],
                _ci(d["auroc_delong"]),
                _ci(block["auroc"]),
                _ci(block["auprc"]),
                _ci(block["brier"]),
            ]
        )
    body = _table(
        ["model", "cases", "events", "AUROC (DeLong CI)", "AUROC (bootstrap CI)", "AUPRC", "Brier"],
        rows,
    )
    paired = [
        [
            _e(r["comparison"]),
            r["n_cases"],
            _ci({"value": r["difference"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}),
            _pval(r["p_value"]),
        ]
        for r in m["discrimination"]["paired_delong"].values()
    ]
    body += "<p>Paired DeLong tests, fused model vs each single modality:</p>"
    body += _table(["comparison", "cases", "ΔAUROC (CI)", "p"], paired)
    body += f'<div class="figs">{_figure(png, "roc", "ROC curves")}</div>'
    return body


def _calibration(m: dict[str, Any], png: dict[str, bytes]) -> str:
    rows = []
    for name, c in m["calibration"].items():
        rows.append(
            [
                _e(name),
                c["n_cases"],
                _ci(c["intercept"]),
                _ci(c["slope"]),
                _ci(c["oe_ratio"]),
                _num(c["brier"]),
                _num(c["scaled_brier"]),
                _num(c["ece"]),
            ]
        )
    body = _table(
        ["model", "cases", "intercept (0)", "slope (1)", "O/E (1)", "Brier", "scaled Brier", "ECE"],
        rows,
    )
    note = m["calibration"]["fusion"].get("note")
    if note:
        body += f'<p class="note">Calibration intercept and slope: {_e(note)}.</p>'
    body += '<div class="figs">'
    body += _figure(png, "calibration", "Calibration of the fused risk with 95 % band")
    body += _figure(png, "reliability", "Reliability diagram behind the ECE (secondary)")
    body += "</div>"
    return body


def _utility(m: dict[str, Any], png: dict[str, bytes]) -> str:
    rows = []
    for r in m["thresholds"]["fusion"]:
        rows.append(
            [
                _num(r["threshold"], 2),
                _num(r["flagged"]),
                _ci(r["sensitivity"]),
                _ci(r["specificity"]),
                _ci(r["ppv"]),
                _ci(r["npv"]),
                _num(r["net_benefit"], 4),
                f"{r['tp']}/{r['fp']}/{r['fn']}/{r['tn']}",
            ]
        )
    body = _table(
        [
            "threshold",
            "flagged",
            "sensitivity",
            "specificity",
            "PPV",
            "NPV",
            "net benefit",
            "TP/FP/FN/TN",
        ],
        rows,
    )
    body += f'<div class="figs">{_figure(png, "decision_curve", "Decision curve")}</div>'
    return body


def _conformal(m: dict[str, Any]) -> str:
    c = m["conformal"]
    fitted = c["fitted"]
    src = fitted.get("source") or {}
    folder = Path(str(src.get("evaluation", "")))
    where = "/".join(folder.parts[-2:]) or "another evaluation"
    body = (
        f"<p>{_e(c['description'])} Calibrated on the evaluation <code>{_e(where)}</code>"
        + (f" (its {_e(src['split'])} split)" if src.get("split") else "")
        + ". A case's set holds the outcomes its risk does not rule out at this level: "
        "<em>positive</em> or <em>negative</em> (one outcome), <em>uncertain</em> (both) or "
        "<em>empty</em> (a risk unlike the calibration cases of either outcome).</p>"
    )
    cov = c["coverage"]
    levels = fitted["levels"]
    promised = levels | {"overall": min(levels.values())}  # per outcome ⇒ at least the least
    body += _table(
        ["cases", "n", "coverage (95 % CI)", "promised"],
        [
            [
                label,
                cov[key]["n"],
                _ci(cov[key]),
                f"≥ {_num(promised[key], 2)}" if key in promised else "—",
            ]
            for key, label in (
                ("events", "events"),
                ("non_events", "non-events"),
                ("overall", "all"),
            )
        ],
    )
    sets = c["sets"]
    body += _table(
        ["set", "cases", "share"],
        [
            [k, sets[k]["n"], _pct(sets[k]["share"])]
            for k in ("positive", "negative", "uncertain", "empty")
        ],
    )
    for col, rows in (c.get("by_group") or {}).items():
        shown = [r for r in rows if not r["suppressed"]]
        if not shown:
            continue
        body += f"<p>Coverage within each {_e(col)} (groups too small to report left out):</p>"
        body += _coverage_by_group_table(
            col,
            shown,
            classes=[
                "gap"
                if fitted["mondrian"]
                and any(
                    r[k]["n"] and r[k]["ci_high"] is not None and r[k]["ci_high"] < levels[k]
                    for k in ("events", "non_events")
                )
                else ""
                for r in shown
            ],
        )
    sweep = c.get("by_alpha")
    if sweep:
        body += (
            "<p>The same calibration cases at other error levels, on these cases (a smaller "
            "alpha promises more and settles fewer cases):</p>"
        )
        body += _table(
            [
                "alpha",
                "event from",
                "non-event up to",
                "events covered",
                "non-events covered",
                "one outcome",
                "wrong among them",
            ],
            [
                [
                    _num(r["alpha"], 2),
                    "always" if r["positive_from"] is None else _pct(r["positive_from"]),
                    "always" if r["negative_up_to"] is None else _pct(r["negative_up_to"]),
                    _ci(r["events"]),
                    _ci(r["non_events"]),
                    _pct(r["singletons"]),
                    _pct(r["singleton_error"]),
                ]
                for r in sweep
            ],
        )
    err = c["singletons"]["error"]
    body += (
        f"<p>{_pct(c['singletons']['share'])} of cases got a single outcome; among them the "
        f"outcome was wrong in {_pct(err['value'])} (95 % CI {_pct(err['ci_low'])}–"
        f"{_pct(err['ci_high'])}).</p>"
    )
    if c.get("n_in_calibration"):
        body += (
            f'<p class="note">{c["n_in_calibration"]} of these cases calibrated the sets: their '
            "coverage is in-sample.</p>"
        )
    if c.get("adaptive"):
        body += _adaptive(c["adaptive"], levels)
    return body


def _coverage_by_group_table(
    column: str, rows: list[dict[str, Any]], classes: Sequence[str] = ()
) -> str:
    """The rows of :func:`~clinfuse.evaluation.conformal.coverage_by_group` as a table."""
    return _table(
        [column, "n", "events covered (95 % CI)", "non-events covered (95 % CI)", "one outcome"],
        [
            [_e(r["group"]), r["n"], _ci(r["events"]), _ci(r["non_events"]), _pct(r["singletons"])]
            for r in rows
        ],
        classes=classes,
    )


def _adaptive(a: dict[str, Any], levels: dict[str, float]) -> str:
    cov = a["coverage"]
    bound = a["bound"]
    body = (
        f"<h3>Adaptive sets (replayed in date order)</h3><p>The {a['n']} dated cases in date "
        "order, each outcome's level moving after each of its cases by γ·(target − missed) "
        f"with γ = {a['gamma']:g} (adaptive conformal inference, Gibbs &amp; Candès 2021): what "
        "the sets would have given had each outcome been known before the next case. Events "
        f"covered {_ci(cov['events'])}, non-events {_ci(cov['non_events'])}; promised "
        f"≥ {_num(levels['events'], 2)} and ≥ {_num(levels['non_events'], 2)} in the long run, "
        "whatever the drift, within "
        + " and ".join(
            f"±{_num(bound[k], 3)} ({k.replace('_', '-')})" for k in bound if bound[k] is not None
        )
        + f" over these cases. Levels at the end: events {_num(a['final_levels']['events'], 3)}, "
        f"non-events {_num(a['final_levels']['non_events'], 3)}. The column "
        "<code>conformal_set_adaptive</code> of <code>predictions.csv</code> holds each "
        "case's set.</p>"
    )
    shown = [r for r in a["by_period"] if not r["suppressed"]]
    if shown:
        body += _coverage_by_group_table("period", shown)
    if a["n_undated"]:
        body += f'<p class="note">{a["n_undated"]} undated cases were not replayed.</p>'
    return body


def _over_time(m: dict[str, Any], png: dict[str, bytes]) -> str:
    o = m["over_time"]
    body = (
        f"<p>{o['n_dated']} cases dated by <code>{_e(o['column'])}</code>"
        + (f", from {_e(o['first'])} to {_e(o['last'])}" if o.get("first") else "")
        + (f"; {o['n_undated']} without a date left out" if o["n_undated"] else "")
        + f". Periods with fewer than {o['min_size']} cases or {o['min_events']} events or "
        "non-events are not reported.</p>"
    )
    body += _table(
        [
            o["period"],
            "n",
            "events",
            "observed rate",
            "mean risk",
            "O/E (95 % CI)",
            "AUROC (95 % CI)",
            "Brier",
        ],
        [
            [_e(r["period"]), r["n"], r["n_events"], "—", "—", "suppressed", "—", "—"]
            if r["suppressed"]
            else [
                _e(r["period"]),
                r["n"],
                r["n_events"],
                _pct(r["observed_rate"]),
                _pct(r["mean_risk"]),
                _ci(r["oe"], 2),
                _ci(r["auroc"]),
                _num(r["brier"]),
            ]
            for r in o["periods"]
        ],
        classes=["suppressed" if r["suppressed"] else "" for r in o["periods"]],
    )
    drift = o["drift"]
    if drift["per_year"]["value"] is None:
        body += f"<p>Calibration drift: {_e(drift.get('reason', 'undefined'))}.</p>"
    else:
        b = drift["per_year"]
        body += (
            "<p>Calibration drift (logistic model of the outcome with the model's logit as "
            "offset and years since the first case): the log odds of the outcome change by "
            f"{_ci(b, 2)} per year beyond the model's risks ({_p(b['p_value'])}); 0 "
            "means no drift.</p>"
        )
    slope = drift.get("slope_per_year") or {}
    if slope.get("value") is not None:
        body += (
            "<p>Drift of the calibration slope (the same model with the logit and its product "
            f"with time as covariates): the slope is {_ci(drift['slope'], 2)} at the first case "
            f"and changes by {_ci(slope, 2)} per year ({_p(slope['p_value'])}); below 0 "
            "the risks grow too extreme with time.</p>"
        )
    trend = o.get("auroc_trend") or {}
    if trend.get("value") is None:
        body += f"<p>Trend of the AUROC: {_e(trend.get('reason', 'undefined'))}.</p>"
    else:
        body += (
            f"<p>Trend of the AUROC across the {trend['k']} reported periods (inverse-variance "
            f"weighted regression on time): {_ci(trend)} per year ("
            f"{_p(trend['p_value'])}).</p>"
        )
    body += f'<div class="figs">{_figure(png, "over_time", "O/E and AUROC by period")}</div>'
    if o.get("cusum"):
        body += _cusum(o["cusum"], png)
    if o.get("cusum_by_site"):
        body += _cusum_by_site(o["cusum_by_site"])
    if o.get("segments"):
        body += _segments(o["segments"])
    if o.get("segments_by_site"):
        body += _segments_by_site(o["segments_by_site"])
    return body


def _segments_by_site(by_site: dict[str, Any]) -> str:
    """Each site's calibration segments: a change at one site is diluted in the pooled cut."""
    rows = [
        [
            _e(site),
            seg["n_cases"],
            "—" if seg.get("n_changes") is None else seg["n_changes"],
            ", ".join(
                f"{_e(c['date'])} ({_e(c['low'])} to {_e(c['high'])})"
                for c in seg.get("change_spans", [])
            )
            or "—",
            " → ".join(f"{r['odds_ratio']:.2f}" for r in seg.get("segments", [])),
        ]
        for site, seg in by_site["groups"].items()
    ]
    left = "".join(
        f"<p>Site {_e(site)} left out: {_e(reason)}.</p>"
        for site, reason in by_site.get("left_out", {}).items()
    )
    return (
        "<p>The same segmentation at each site, on its own cases:</p>"
        + _table(["site", "cases", "changes", "dated (could be)", "odds ratios vs model"], rows)
        + left
    )


def _segments(seg: dict[str, Any]) -> str:
    """The calibration segments: the number of changes chosen by BIC and each segment's
    odds ratio against the model."""
    head = (
        "<h3>Changes of calibration over time (segments)</h3><p>The dated cases cut into "
        "consecutive segments, each with its own odds ratio of the outcome against the "
        "model's risks; the number of changes chosen by BIC among 0 to "
        f"{len(seg['by_changes']) - 1} (cuts between {_e(seg['granularity'])}; at least "
        f"{seg['min_cases']} cases and {seg['min_events']} events and non-events a segment). "
        "Unlike a CUSUM signal, this finds several changes, and a change that reverts. The "
        "intervals take the cuts as given.</p>"
    )
    if seg.get("n_changes") is None:
        return head + f"<p>{_e(seg.get('note', 'not estimated'))}.</p>"
    verdict = (
        "<p>No change: one odds ratio fits the whole span best.</p>"
        if seg["n_changes"] == 0
        else f"<p>{seg['n_changes']} change{'s' * (seg['n_changes'] > 1)}, from "
        + ", ".join(
            f"{_e(c['date'])} (could be {_e(c['low'])} to {_e(c['high'])})"
            for c in seg["change_spans"]
        )
        + ".</p>"
    )
    rows = [
        [
            f"{_e(r['start'])} to {_e(r['end'])}",
            r["n_cases"],
            r["n_events"],
            f"{r['expected']:.1f}",
            f"{r['odds_ratio']:.2f} ({r['ci_low']:.2f}–{r['ci_high']:.2f})",
        ]
        for r in seg["segments"]
    ]
    return (
        head
        + verdict
        + _table(["segment", "cases", "events", "expected", "odds ratio vs model (CI)"], rows)
    )


def _change_cell(change: dict[str, Any]) -> str:
    """The estimated change and its interval; marked when the interval reaches the first case
    the chart considered (the shift may predate it); none when no lasting change fits."""
    if change.get("lasting") is False:
        return "no lasting change (the shift reverted)"
    cell = f"{_e(change['date'])} ({_e(change['low'])} to {_e(change['high'])})"
    if change.get("open_start"):
        cell += " — reaches the chart's " + (
            "restart" if change.get("after_restart") else "first case"
        )
    return cell


def _odds_cell(change: dict[str, Any]) -> str:
    return (
        f"{change['odds_ratio']:.2f} ({change['odds_ratio_low']:.2f}–"
        f"{change['odds_ratio_high']:.2f})"
    )


def _cusum_by_site(c: dict[str, Any]) -> str:
    """Each site's CUSUM charts: a shift at one site is diluted in the pooled chart."""
    rows = []
    for site, cusum in c["groups"].items():
        for chart in cusum["charts"]:
            first = chart["signals"][0] if chart["signals"] else None
            change = (first or {}).get("change")
            rows.append(
                [
                    _e(site),
                    cusum["n"],
                    _e(chart["direction"]),
                    chart["n_signals"],
                    _e(first["date"]) if first else "none",
                    _change_cell(change) if change else "",
                    _odds_cell(change) if change else "",
                ]
            )
    body = (
        "<h3>Risk-adjusted CUSUM by site</h3><p>The same charts for each site's dated cases "
        "alone, with limits at a false-alarm rate of "
        f"{_pct(c['false_alarm_each'])} each, so that a chart of either direction signals "
        f"falsely at any site with probability at most {_pct(c['false_alarm'])}.</p>"
    )
    body += _table(
        [
            "site",
            "dated cases",
            "watching for",
            "signals",
            "first signal",
            "change estimated (95 % CI)",
            "odds ratio since (95 % CI)",
        ],
        rows,
    )
    if c.get("left_out"):
        body += (
            '<p class="note">Not charted: '
            + "; ".join(f"{_e(k)} ({_e(v)})" for k, v in c["left_out"].items())
            + ".</p>"
        )
    return body


def _cusum(c: dict[str, Any], png: dict[str, bytes]) -> str:
    body = (
        f"<h3>Risk-adjusted CUSUM</h3><p>The {c['n']} dated cases in date order, each adding "
        "the log-likelihood ratio of a shift in the odds of the outcome against the model's "
        "risk (Steiner et al. 2000); a chart signals at its limit and starts again. The limits "
        f"are set by {c['n_sim']} simulations from the model's own risks: were the model "
        f"calibrated throughout, each chart would signal in these cases with probability "
        f"{_pct(c['false_alarm'])}. A climb began after the chart last stood at 0.</p>"
    )
    rows = []
    for chart in c["charts"]:
        if not chart["signals"]:
            rows.append([_e(chart["direction"]), _num(chart["limit"], 2), "none"] + [""] * 5)
        for sig in chart["signals"]:
            change = sig.get("change")
            rows.append(
                [
                    _e(chart["direction"]),
                    _num(chart["limit"], 2),
                    _e(sig["date"]),
                    _e(sig["since"]),
                    sig["n_cases"],
                    f"{sig['observed']} / {sig['expected']:.1f}",
                    _change_cell(change) if change else "",
                    _odds_cell(change) if change else "",
                ]
            )
    body += _table(
        [
            "watching for",
            "limit",
            "signal",
            "climb began",
            "cases",
            "events observed / expected",
            "change estimated (95 % CI)",
            "odds ratio since (95 % CI)",
        ],
        rows,
    )
    if any(sig.get("change") for ch in c["charts"] for sig in ch["signals"]):
        body += (
            '<p class="note">The change is the maximum-likelihood case, among those since the '
            "chart last started and up to the signal, from which the odds moved and stayed so "
            "to the last case; its interval spans the profile-likelihood confidence set. The "
            "odds ratio is estimated on all cases from the change on: it assumes the shift "
            "lasted, and a shift that ended earlier is diluted.</p>"
        )
    listed = sum(len(ch["signals"]) for ch in c["charts"])
    total = sum(ch["n_signals"] for ch in c["charts"])
    if total > listed:
        body += f'<p class="note">{total - listed} later signals are not listed.</p>'
    return body + f'<div class="figs">{_figure(png, "cusum", "Risk-adjusted CUSUM charts")}</div>'


def _risk(m: dict[str, Any], png: dict[str, bytes]) -> str:
    d = m["risk_distribution"]
    rows = []
    for label in ("events", "non_events"):
        r = d[label]
        rows.append(
            [label.replace("_", "-"), r["n"]]
            + [_num(r.get(k)) for k in ("mean", "p10", "q1", "median", "q3", "p90")]
        )
    body = _table(["outcome", "n", "mean", "P10", "Q1", "median", "Q3", "P90"], rows)
    if d.get("discrimination_slope") is not None:
        body += f"<p>Discrimination slope: {_num(d['discrimination_slope'])}.</p>"
    body += f'<div class="figs">{_figure(png, "risk_distribution", "Risk distribution by outcome")}</div>'
    return body


def _groups(m: dict[str, Any], columns: Sequence[str]) -> str:
    body = ""
    for col in columns:
        res = m["subgroups"][col]
        gap = res["largest_gap"].get("auroc")
        rows, classes = [], []
        for r in res["groups"]:
            if r["suppressed"]:
                rows.append(
                    [_e(r["group"]), f"suppressed: {_e(r['reason'])}", "", "", "", "", "", ""]
                )
                classes.append("suppressed")
                continue
            rows.append(
                [
                    _e(r["group"]),
                    r["n_cases"],
                    r["n_events"],
                    _ci(r["auroc"]),
                    _num(r["brier"]["value"]),
                    _ci(r["oe_ratio"]),
                    _ci(r["sensitivity"]),
                    _ci(r["specificity"]),
                ]
            )
            classes.append("gap" if gap and r["group"] in (gap["lowest"], gap["highest"]) else "")
        body += f"<h3>{_e(col)}</h3>"
        body += _table(
            [
                "group",
                "cases",
                "events",
                "AUROC (DeLong CI)",
                "Brier",
                "O/E",
                f"sensitivity @ {res['threshold']:g}",
                f"specificity @ {res['threshold']:g}",
            ],
            rows,
            classes,
        )
        gaps = [
            f"{_e(k)}: {_num(v['gap'])} ({_e(v['lowest'])} vs {_e(v['highest'])})"
            for k, v in res["largest_gap"].items()
            if v
        ]
        if gaps:
            body += "<p>Largest gaps (highlighted rows: AUROC): " + "; ".join(gaps) + ".</p>"
        het = res.get("heterogeneity") or {}
        tests = []
        if het.get("auroc"):
            a = het["auroc"]
            tests.append(
                f"AUROC Cochran's Q = {a['q']:.2f} (df {a['df']}, {_p(a['p_value'])}, "
                f"I² = {100 * a['i2']:.0f} %)"
            )
        if het.get("calibration_in_the_large"):
            c = het["calibration_in_the_large"]
            tests.append(
                f"calibration-in-the-large likelihood ratio {c['lr']:.2f} (df {c['df']}, "
                f"{_p(c['p_value'])})"
            )
        if tests:
            body += (
                "<p>Do the reported groups differ more than chance allows? "
                + "; ".join(tests)
                + ".</p>"
            )
        body += _funnel(res.get("funnel"))
        body += (
            f"<p>Groups with fewer than {res['min_size']} cases or {res['min_events']} "
            "events/non-events are suppressed.</p>"
        )
    return body


def _funnel(funnel: dict[str, Any] | None) -> str:
    """The funnel plot's verdict: the groups outside the model's limits and the dispersion."""
    from clinfuse.evaluation.funnel import MIN_GROUPS_DISPERSION

    if not funnel or len(funnel["groups"]) < 2:
        return ""
    outside = [
        f"{_e(g['group'])} (O/E {_num(g['oe'])}, z = {g['z']:+.2f}, outside the "
        f"{_e(g['outside'])} limits"
        + (
            "; inside them once widened for overdispersion"
            if funnel["dispersion"]["widened"] and not g["outside_overdispersed"]
            else ""
        )
        + ")"
        for g in funnel["groups"]
        if g["outside"]
    ]
    d = funnel["dispersion"]
    text = (
        "<p>Funnel plot (events against the model's expectation, limits at "
        + " and ".join(f"{100 * level:g} %" for level in funnel["levels"])
        + "): "
        + ("; ".join(outside) if outside else "every group lies within the limits")
        + f". Do the groups differ more than the model allows? χ² {d['chi2']:.1f} (df "
        f"{d['df']}, {_p(d['p_value'])}); overdispersion φ = {d['phi']:.2f}"
        + (
            f", so the limits were also widened by √φ = {d['phi'] ** 0.5:.2f}"
            if d["widened"]
            else " (limits not widened: that takes φ > 1 and at least "
            f"{MIN_GROUPS_DISPERSION} groups)"
        )
        + ".</p>"
    )
    if d.get("random_effects"):
        beyond = [
            f"{_e(g['group'])} (z = {g['z_random_effects']:+.2f}, outside the "
            f"{_e(g['outside_random_effects'])} limits)"
            for g in funnel["groups"]
            if g["outside_random_effects"]
        ]
        text += (
            "<p>With additive random effects (the groups' true O/E spread around the model's "
            f"with SD τ = {d['tau2'] ** 0.5:.3f}; Spiegelhalter 2005, as in the NHS's SHMI), "
            + ("; ".join(beyond) if beyond else "every group lies within the limits")
            + ". These limits widen most for the largest groups.</p>"
        )
    return text


def _fusion(m: dict[str, Any]) -> str:
    if "ablation" not in m:
        return "<p>Single-modality run: no fusion analysis.</p>"
    ab = m["ablation"]
    body = (
        f"<h3>Modality ablation</h3><p>On the {ab['n_cases']} {_e(ab['cases'])} "
        f"({ab['n_events']} events); the trained model with the other modalities masked out.</p>"
    )
    if ab.get("note"):
        body += f'<p class="note">{_e(ab["note"])}</p>'
    rows = []
    for r in ab["rows"]:
        vs = r["vs_all"]
        rows.append(
            [
                _e(r["name"]),
                _ci(r["auroc"]),
                _ci(r["auprc"]),
                _ci(r["brier"]),
                "—"
                if vs is None
                else _ci(
                    {"value": vs["difference"], "ci_low": vs["ci_low"], "ci_high": vs["ci_high"]}
                ),
                "—" if vs is None else _pval(vs["p_value"]),
            ]
        )
    body += _table(["modalities", "AUROC", "AUPRC", "Brier", "ΔAUROC (this − all)", "p"], rows)
    rob = m["robustness"]
    body += (
        "<h3>Missing-modality robustness</h3><p>Each modality removed at test time, on the "
        f"{_e(rob['cases'])} (paired).</p>"
    )
    rows = []
    for r in rob["rows"]:
        d = r["difference"]
        rows.append(
            [
                _e(r["removed"]),
                r["n_cases"],
                _ci(r["auroc_full"]),
                _ci(r["auroc_without"]),
                _ci({"value": d["difference"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}),
                _pval(d["p_value"]),
                _num(r["brier_full"]),
                _num(r["brier_without"]),
                r["n_unscorable"],
            ]
        )
    body += _table(
        [
            "removed",
            "cases",
            "AUROC all",
            "AUROC without",
            "ΔAUROC (without − all)",
            "p",
            "Brier all",
            "Brier without",
            "cases left with nothing",
        ],
        rows,
    )
    return body


def _model_card(m: dict[str, Any]) -> str:
    card = m["model_card"]
    model = card["model"]
    rows = [
        ["modalities", _e(", ".join(model["modalities"]))],
        ["fusion", _e(model["fusion"])],
        ["encoders", _e(", ".join(f"{k}: {v}" for k, v in model["encoders"].items()))],
        ["outcome", _e(model["target"])],
        ["calibrators", _e(", ".join(model["calibrators"]) or "none")],
        [
            "site update",
            _e(
                ", ".join(f"{k}: {v}" for k, v in model.get("recalibrated", {}).items())
                or "none (as trained)"
            ),
        ],
        ["software", _e(", ".join(f"{k}={v}" for k, v in model["info"].items()))],
    ]
    perf = card["performance"]
    body = "<h3>Intended use</h3><p>" + _e(card["intended_use"]) + "</p>"
    body += "<h3>Model</h3>" + _table(["", ""], rows)
    body += (
        f"<h3>Evaluation data</h3><p>{card['data']['n_cases']} cases, {card['data']['n_events']} "
        f"events; sites: {_e(', '.join(card['data']['sites']) or 'not recorded')}.</p>"
    )
    body += (
        f"<h3>Performance</h3><p>AUROC {_ci(perf['auroc'])}; Brier {_ci(perf['brier'])}; "
        f"calibration slope {_ci(perf['calibration_slope'])}, intercept "
        f"{_ci(perf['calibration_intercept'])}.</p>"
    )
    body += "<h3>Limitations</h3><ul>" + "".join(f"<li>{_e(x)}</li>" for x in card["limitations"])
    body += "</ul>"
    return body


def render_report(
    metrics: dict[str, Any], png: dict[str, bytes], *, thresholds: Sequence[float]
) -> str:
    """The report page from ``metrics.json`` content and the figures' PNG bytes."""
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in metrics.get("notes", []))
    subgroup_cols = [c for c in metrics["subgroups"] if c != "site"]
    kind = "cross-validation" if metrics.get("crossval") else "evaluation"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>clinfuse {kind} report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>clinfuse {kind} report</h1>",
        f"<p>{metrics['n_cases']} cases, {metrics['n_events']} events. Section tags name the "
        "TRIPOD+AI items (Collins et al., BMJ 2024;385:e078378) each section answers.</p>",
        notes,
        _section("Participants", "participants", _participants(metrics)),
        _section("Missing data and modality availability", "missing", _missing(metrics)),
    ]
    if metrics.get("case_mix"):
        parts.append(
            _section("Case mix compared with the development data", "case_mix", _case_mix(metrics))
        )
    parts += [
        _section("Methods of evaluation", "methods", _methods(metrics, thresholds)),
    ]
    if metrics.get("crossval"):
        parts.append(
            _section(
                f"Internal–external validation: leave one {metrics['crossval']['group_by']} out"
                if metrics["crossval"].get("design") == "leave-one-group-out"
                else f"Internal validation: {metrics['crossval']['folds']}-fold cross-validation",
                "crossval",
                _crossval(metrics, png),
            )
        )
    parts += [
        _section("Discrimination", "discrimination", _discrimination(metrics, png)),
        _section("Calibration", "calibration", _calibration(metrics, png)),
        _section("Clinical utility", "utility", _utility(metrics, png)),
        _section("Risk distributions", "risk", _risk(metrics, png)),
    ]
    if metrics.get("conformal"):
        parts.append(_section("Conformal prediction sets", "conformal", _conformal(metrics)))
    if metrics.get("over_time"):
        parts.append(_section("Performance over time", "over_time", _over_time(metrics, png)))
    if subgroup_cols:
        parts.append(
            _section(
                "Subgroups",
                "subgroups",
                _groups(metrics, subgroup_cols)
                + f'<div class="figs">{_figure(png, "subgroups", "AUROC by subgroup and site")}'
                + f"{_figure(png, 'funnel', 'Funnel plots by subgroup and site')}</div>",
            )
        )
    if "site" in metrics["subgroups"]:
        sites = _groups(metrics, ["site"])
        if not subgroup_cols:  # the figures appear once, under the subgroups when there are any
            sites += f'<div class="figs">{_figure(png, "funnel", "Funnel plot by site")}</div>'
        parts.append(_section("Sites", "sites", sites))
    parts += [
        _section("Fusion analysis: ablation and robustness", "fusion", _fusion(metrics)),
        _section("Model card", "model_card", _model_card(metrics)),
        "</body></html>",
    ]
    return "".join(parts)


def _reclassification(c: dict[str, Any], pct: int) -> str:
    """IDI and the two parts of the categorical NRI, then each reclassification table."""
    ts = sorted(c["thresholds"])
    cats = (
        [f"< {ts[0]:g}"] + [f"{a:g}–{b:g}" for a, b in itertools.pairwise(ts)] + [f"≥ {ts[-1]:g}"]
    )

    def ci(r: dict[str, Any], key: str, digits: int = 3) -> str:
        return _ci(
            {"value": r[key], "ci_low": r[f"{key}_ci_low"], "ci_high": r[f"{key}_ci_high"]},
            digits,
        )

    html = "<h2>Reclassification</h2>" + _table(
        [
            "model",
            f"IDI ({pct} % CI)",
            f"NRI, events ({pct} % CI)",
            f"NRI, non-events ({pct} % CI)",
            "NRI sum",
        ],
        [
            [
                _e(r["model"]),
                ci(r, "idi"),
                ci(r, "nri_events"),
                ci(r, "nri_nonevents"),
                _num(r["nri"]),
            ]
            for r in c["pairs"]
        ],
    )
    html += (
        '<p class="note">IDI: the change in mean risk of events minus mean risk of non-events '
        "(discrimination slope). NRI over the risk categories "
        + ", ".join(_e(x) for x in cats)
        + ": events moved up minus moved down, and non-events moved down minus moved up, "
        "as shares of each group. Read the two parts separately — their sum weighs events and "
        "non-events equally whatever the prevalence, depends on the categories chosen, and can "
        "favour a worse-calibrated model; the net benefit above weighs them by the threshold.</p>"
    )
    for r in c["pairs"]:
        for group, label in (("events", "events"), ("nonevents", "non-events")):
            table = r["reclassification"][group]
            rows = [[_e(f"{c['reference']}: {cats[i]}"), *row] for i, row in enumerate(table)]
            html += f"<p><b>{_e(r['model'])}</b> vs {_e(c['reference'])}, {label}</p>" + _table(
                ["", *(f"{r['model']}: {x}" for x in cats)], rows
            )
    return html


def render_comparison(c: dict[str, Any], png: dict[str, bytes]) -> str:
    """The ``report.html`` of ``clinfuse compare`` from ``comparison.json`` content."""
    ts = c["thresholds"]
    pct = int(100 * c["level"])
    dropped = [m for m in c["models"] if m["n_dropped"]]
    body = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>clinfuse model comparison</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>clinfuse model comparison</h1>",
        f"<p>{c['n_common_cases']} cases scored by every model ({c['n_events']} events); "
        f"reference: <b>{_e(c['reference'])}</b>. Differences are <i>model − reference</i>: "
        "ΔAUROC &gt; 0, ΔBrier &lt; 0 and Δnet benefit &gt; 0 favour the model.</p>",
    ]
    if dropped:
        body.append(
            '<p class="note">Compared on the common cases only: '
            + "; ".join(f"{_e(m['model'])} had {m['n_dropped']} more" for m in dropped)
            + ".</p>"
        )
    if c.get("optimistic"):
        body.append(
            '<p class="note">Optimistic: '
            + "; ".join(
                f"{_e(name)} was evaluated on {n} of its model's own training or validation cases"
                for name, n in c["optimistic"].items()
            )
            + ". Its figures, and the differences with it, flatter that model.</p>"
        )
    body.append("<h2>Models</h2>")
    body.append(
        _table(
            [
                "model",
                "cases",
                f"AUROC (DeLong {pct} % CI)",
                "Brier",
                "cal. intercept",
                "cal. slope",
                "O/E",
                *(f"net benefit at {t:g}" for t in ts),
            ],
            [
                [
                    _e(m["model"]),
                    m["n_cases"],
                    _ci(
                        {
                            "value": m["auroc"],
                            "ci_low": m["auroc_ci_low"],
                            "ci_high": m["auroc_ci_high"],
                        }
                    ),
                    _num(m["brier"]),
                    _num(m["calibration_intercept"], 2),
                    _num(m["calibration_slope"], 2),
                    _num(m["oe_ratio"], 2),
                    *(_num(m[f"net_benefit_{t:g}"]) for t in ts),
                ]
                for m in c["models"]
            ],
        )
    )
    body.append("<h2>Paired differences against the reference</h2>")

    def diff(r: dict[str, Any], key: str) -> str:
        return _ci({"value": r[key], "ci_low": r[f"{key}_ci_low"], "ci_high": r[f"{key}_ci_high"]})

    body.append(
        _table(
            [
                "model",
                f"ΔAUROC ({pct} % CI)",
                "DeLong p",
                "Holm p",
                f"ΔBrier ({pct} % CI)",
                *(f"Δnet benefit at {t:g}" for t in ts),
            ],
            [
                [
                    _e(r["model"]),
                    diff(r, "delta_auroc"),
                    _pval(r["delong_p"]),
                    _pval(r["delong_p_holm"]),
                    diff(r, "delta_brier"),
                    *(diff(r, f"delta_net_benefit_{t:g}") for t in ts),
                ]
                for r in c["pairs"]
            ],
        )
    )
    body.append(_reclassification(c, pct))
    body.append(
        '<div class="figs">'
        + _figure(png, "roc", "ROC curves on the common cases")
        + _figure(png, "calibration", "Flexible calibration curves")
        + _figure(png, "decision_curve", "Decision curves")
        + "</div>"
    )
    body.append(
        "<h2>Methods</h2><ul>"
        "<li>ΔAUROC: paired DeLong test (Sun &amp; Xu fast algorithm) with a Wald interval; "
        "p-values Holm-adjusted over the comparisons with the reference.</li>"
        f"<li>ΔBrier and Δnet benefit: paired percentile bootstrap ({c['n_boot']} replicates, "
        f"seed {c['seed']}): each replicate resamples the cases once and scores every model "
        "on them.</li>"
        "<li>Calibration: logistic recalibration intercept and slope, O/E, flexible "
        "(restricted cubic spline) curves, each model on the common cases.</li>"
        "<li>Cases are matched by <code>case_id</code>; an outcome that differs between "
        "folders stops the comparison.</li></ul></body></html>"
    )
    return "".join(body)


def _monitoring_by_site(s: dict[str, Any]) -> str:
    """The monitoring report's "By site" section (empty without sites)."""
    from clinfuse.evaluation.monitor import site_flags

    by = s.get("by_site")
    if not by:
        return ""
    out = [
        "<h2>By site</h2>",
        f"<p>A feed or assay that changes at one site is diluted among the others in the "
        f"periods above, so each site with at least {s['min_size']} dated cases is compared "
        f"{_e(s['period'])} by {_e(s['period'])} with its own development cases (its case mix "
        "and feeds as they were; with all of them for a site that has too few). The p-values "
        "are Holm-adjusted across every site's periods together.</p>",
    ]
    names = ", ".join(f"{_e(x['site'])} ({x['n']})" for x in by["left_out"])
    if not by["sites"]:
        return "".join(out) + f"<p>No site has enough dated cases: {names}.</p>"
    rows = []
    for e in by["sites"]:
        flagged = site_flags(e)
        rows.append(
            [
                _e(e["site"]),
                e["n"],
                sum(1 for r in e["periods"] if not r["suppressed"]),
                f"its own ({e['n_reference']})"
                if e["reference"] == "site"
                else f"all ({e['n_reference']})",
                _e(" · ".join(flagged)) if flagged else "none",
            ]
        )
    out.append(
        _table(["site", "cases", f"{s['period']}s compared", "development cases", "flags"], rows)
    )
    if by["left_out"]:
        out.append(
            f"<p class='note'>Not compared (fewer than {s['min_size']} dated cases): {names}.</p>"
        )
    return "".join(out)


def render_monitoring(s: dict[str, Any], png: dict[str, bytes]) -> str:
    """The ``report.html`` of ``clinfuse monitor`` from ``monitoring.json`` content."""
    dev = s["development"]
    thresholds = [f"{t:g}" for t in s["thresholds"]]
    mods = list(dev["availability"])
    body = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>clinfuse monitoring report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>clinfuse monitoring report</h1>",
        f"<p>Model version <code>{_e(s['model_version'])}</code>; {s['n_dated']} scored cases "
        f"dated by <code>{_e(s['column'])}</code>"
        + (f" from {_e(s['first'])} to {_e(s['last'])}" if s.get("first") else "")
        + (f"; {s['n_undated']} undated cases counted only" if s["n_undated"] else "")
        + f". Each {_e(s['period'])} with at least {s['min_size']} cases is compared with the "
        + (
            f"model's {dev['n']} development cases"
            if not s.get("reference")
            else f"{dev['n']} reference cases (<code>{_e(Path(s['reference']).name)}</code>, "
            "scored by clinfuse predict)"
        )
        + ": risk, the population stability index (PSI) of "
        "the fused logit and of each modality's risk in the development's deciles (below 0.1 "
        "stable, 0.1–0.25 a moderate shift, above 0.25 a major one), modality availability "
        "and the standardised mean difference (SMD) of numeric inputs against the training "
        "split. A change is flagged when it crosses its line and is unlikely by chance at the "
        "period's size: its p-value, Holm-adjusted across the compared periods, below 0.01.</p>",
    ]
    sizes = [r["n"] for r in s["periods"] if not r["suppressed"]]
    if sizes:
        from scipy.stats import chi2

        typical = sorted(sizes)[len(sizes) // 2]
        noise = (1 / typical + 1 / dev["n"]) * float(chi2.ppf(0.95, 9))
        body.append(
            f"<p class='note'>Small periods have large PSIs by chance alone: with {typical} cases "
            f"(the median compared {_e(s['period'])}) and no shift at all, 1 period in 20 has a "
            f"PSI above {noise:.2f}.</p>"
        )
    flagged = [r for r in s["periods"] if r.get("flags")]
    body.append("<h2>Flags</h2>")
    if flagged:
        body.append(
            "<ul>"
            + "".join(
                f"<li><b>{_e(r['period'])}</b>: {_e('; '.join(r['flags']))}</li>" for r in flagged
            )
            + "</ul>"
        )
    else:
        body.append("<p>No period crossed a line.</p>")
    body.append("<h2>By period</h2>")
    header = [s["period"], "cases", "labelled", "mean risk"]
    header += [f"share ≥ {t}" for t in thresholds] + ["PSI fused"]
    header += [f"PSI {m}" for m in mods] + [f"with {m}" for m in mods]
    rows = [
        [
            "development",
            dev["n"],
            "",
            _pct(dev["mean_risk"]),
            *(_pct(dev["alert_rate"][t]) for t in thresholds),
            "",
            *("" for _ in mods),
            *(_pct(dev["availability"][m]) for m in mods),
        ]
    ]
    for r in s["periods"]:
        if r["suppressed"]:
            rows.append(
                [
                    _e(r["period"]),
                    r["n"],
                    r["n_labelled"],
                    "not compared",
                    *[""] * (len(header) - 4),
                ]
            )
            continue
        rows.append(
            [
                _e(r["period"]),
                r["n"],
                r["n_labelled"],
                _pct(r["mean_risk"]),
                *(_pct(r["alert_rate"][t]) for t in thresholds),
                _num(r["psi_fusion"]["value"], 2),
                *(_num(r["psi"][m]["value"], 2) for m in mods),
                *(_pct(r["availability"][m]["value"]) for m in mods),
            ]
        )
    body.append(
        _table(
            header,
            rows,
            classes=["", *("suppressed" if r["suppressed"] else "" for r in s["periods"])],
        )
    )
    body.append(f'<div class="figs">{_figure(png, "monitoring", "Monitoring by period")}</div>')
    body.append(_monitoring_by_site(s))
    if "monitoring_sites" in png:
        body.append(
            f'<div class="figs">{_figure(png, "monitoring_sites", "Monitoring by site")}</div>'
        )
    numeric = sorted({c for r in s["periods"] if not r["suppressed"] for c in r["smd"]})
    if numeric:
        body.append("<h2>Numeric inputs: SMD against the training split</h2>")
        body.append(
            _table(
                [s["period"], *numeric],
                [
                    [_e(r["period"]), *(_num(r["smd"][c]["value"], 2) for c in numeric)]
                    for r in s["periods"]
                    if not r["suppressed"]
                ],
            )
        )
    body.append("<h2>Outcomes known so far</h2>")
    if s["outcomes"] is None:
        body.append(
            "<p>No outcome of both kinds is known yet among these cases: the comparison above "
            "is all there is to see until they arrive.</p>"
        )
    else:
        body.append(_over_time({"over_time": s["outcomes"] | {"column": s["column"]}}, png))
    body.append("</body></html>")
    return "".join(body)
