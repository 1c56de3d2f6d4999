"""Chart specifications (Vega-Lite, drawn in the browser) and the highlighted note.

Pure functions returning plain dicts/strings, so the Streamlit pages stay thin and
the content is testable: ``st.vega_lite_chart(spec)`` draws them interactively
(tooltips, zoom) without a plotting library on the server.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "calibration_spec",
    "decision_curve_spec",
    "funnel_spec",
    "modality_contribution_spec",
    "note_html",
    "risk_spec",
    "roc_spec",
    "signal_spec",
]

_POS, _NEG, _MISSING = "#d62728", "#1f77b4", "#bbbbbb"


def risk_spec(
    risk: float, low: float | None, high: float | None, threshold: float
) -> dict[str, Any]:
    """A risk scale 0–1: the point, its uncertainty band (left out when ``low``/``high`` are
    None: a run without one), and the decision threshold."""
    band = []
    if low is not None and high is not None:
        band.append(
            {
                "data": {"values": [{"low": low, "high": high}]},
                "mark": {"type": "bar", "height": 18, "color": "#9ecae1", "opacity": 0.8},
                "encoding": {
                    "x": {
                        "field": "low",
                        "type": "quantitative",
                        "scale": {"domain": [0, 1]},
                        "title": "calibrated risk",
                    },
                    "x2": {"field": "high"},
                    "tooltip": [
                        {"field": "low", "format": ".3f"},
                        {"field": "high", "format": ".3f"},
                    ],
                },
            }
        )
    return {
        "height": 60,
        "width": "container",
        "layer": [
            *band,
            {
                "data": {"values": [{"risk": risk}]},
                "mark": {"type": "tick", "thickness": 4, "size": 30, "color": "black"},
                "encoding": {
                    "x": {
                        "field": "risk",
                        "type": "quantitative",
                        "scale": {"domain": [0, 1]},
                        "title": "calibrated risk",
                    },
                    "tooltip": [{"field": "risk", "format": ".3f"}],
                },
            },
            {
                "data": {"values": [{"threshold": threshold}]},
                "mark": {"type": "rule", "color": _POS, "strokeDash": [4, 3], "strokeWidth": 2},
                "encoding": {
                    "x": {"field": "threshold", "type": "quantitative"},
                    "tooltip": [{"field": "threshold"}],
                },
            },
        ],
    }


def modality_contribution_spec(
    phi: dict[str, float], present: dict[str, bool], base_value: float
) -> dict[str, Any]:
    """Horizontal bars of per-case modality Shapley values (fused-logit units);
    missing modalities are grey bars at 0 labelled ``missing``."""
    values = []
    for m, v in phi.items():
        has = bool(present.get(m, False))
        values.append(
            {
                "modality": m if has else f"{m} (missing)",
                "phi": float(v) if has else 0.0,
                "effect": "missing" if not has else ("raises risk" if v > 0 else "lowers risk"),
            }
        )
    return {
        "width": "container",
        "height": {"step": 28},
        "title": {
            "text": "contributions to the fused logit",
            "subtitle": f"base value {base_value:+.3f}",
        },
        "data": {"values": values},
        "mark": {"type": "bar"},
        "encoding": {
            "y": {"field": "modality", "type": "nominal", "sort": None, "title": None},
            "x": {"field": "phi", "type": "quantitative", "title": "Shapley value (logit)"},
            "color": {
                "field": "effect",
                "type": "nominal",
                "scale": {
                    "domain": ["raises risk", "lowers risk", "missing"],
                    "range": [_POS, _NEG, _MISSING],
                },
                "legend": {"orient": "bottom", "title": None},
            },
            "tooltip": [
                {"field": "modality"},
                {"field": "phi", "format": "+.4f"},
                {"field": "effect"},
            ],
        },
    }


def signal_spec(
    signal: np.ndarray,
    fs: float,
    lead_names: Sequence[str],
    *,
    segments_s: Sequence[Sequence[float]] | None = None,
    segment_values: np.ndarray | None = None,
    max_points: int = 1500,
) -> dict[str, Any]:
    """One line plot per lead; attribution of each time segment as a shaded band
    behind the trace (red raises, blue lowers the signal's logit).

    Args:
        signal: (leads, samples).
        segments_s: [start, end] seconds of each explained segment.
        segment_values: (leads, segments) attributions.
    """
    sig = np.asarray(signal, dtype=float)
    n_leads, n = sig.shape
    step = max(1, int(np.ceil(n / max_points)))
    t = np.arange(0, n, step) / float(fs)
    lines = [
        {"lead": str(lead_names[i]), "t": round(float(tt), 4), "value": round(float(v), 5)}
        for i in range(n_leads)
        for tt, v in zip(t, sig[i, ::step], strict=True)
    ]
    rects = []
    if segments_s is not None and segment_values is not None:
        vals = np.asarray(segment_values, dtype=float)
        scale = float(np.max(np.abs(vals))) or 1.0
        for i in range(min(n_leads, vals.shape[0])):
            for (start, end), v in zip(segments_s, vals[i], strict=False):
                rects.append(
                    {
                        "lead": str(lead_names[i]),
                        "start": float(start),
                        "end": float(end),
                        "attribution": float(v),
                        "strength": abs(float(v)) / scale,
                    }
                )
    layers: list[dict[str, Any]] = []
    if rects:
        layers.append(
            {
                "data": {"values": rects},
                "mark": {"type": "rect"},
                "encoding": {
                    "x": {"field": "start", "type": "quantitative"},
                    "x2": {"field": "end"},
                    "color": {
                        "field": "attribution",
                        "type": "quantitative",
                        "scale": {"scheme": "redblue", "reverse": True, "domainMid": 0},
                        "legend": None,
                    },
                    "opacity": {
                        "field": "strength",
                        "type": "quantitative",
                        "scale": {"range": [0.05, 0.6]},
                        "legend": None,
                    },
                    "tooltip": [
                        {"field": "start", "title": "from (s)"},
                        {"field": "end", "title": "to (s)"},
                        {"field": "attribution", "format": "+.4f"},
                    ],
                },
            }
        )
    layers.append(
        {
            "data": {"values": lines},
            "mark": {"type": "line", "color": "black", "strokeWidth": 1},
            "encoding": {
                "x": {"field": "t", "type": "quantitative", "title": "time (s)"},
                "y": {
                    "field": "value",
                    "type": "quantitative",
                    "title": None,
                    "scale": {"zero": False},
                },
            },
        }
    )
    return {
        "vconcat": [
            {
                "width": "container",
                "height": 90,
                "title": {"text": str(name), "anchor": "start", "fontSize": 11},
                "layer": [_filter_layer(layer, str(name)) for layer in layers],
            }
            for name in lead_names[:n_leads]
        ],
        "resolve": {"scale": {"color": "shared"}},
    }


def _filter_layer(layer: dict[str, Any], lead: str) -> dict[str, Any]:
    values = [v for v in layer["data"]["values"] if v["lead"] == lead]
    return {**layer, "data": {"values": values}}


def note_html(tokens: Sequence[str], values: Sequence[float], *, max_alpha: float = 0.75) -> str:
    """The note with each token's attribution as its background (escaped HTML).

    Red raises, blue lowers the note's logit; the strongest token gets ``max_alpha``.
    Token text is HTML-escaped, so a note holding markup shows it as text.
    """
    vals = np.asarray(values, dtype=float)
    scale = float(np.max(np.abs(vals))) if len(vals) else 1.0
    scale = scale or 1.0
    parts = []
    for tok, v in zip(tokens, vals, strict=False):
        a = max_alpha * min(abs(v) / scale, 1.0)
        rgb = "214,39,40" if v > 0 else "31,119,180"
        parts.append(
            f'<span title="{v:+.4f}" style="background: rgba({rgb},{a:.3f})">{html.escape(str(tok))}</span>'
        )
    return (
        '<div style="white-space: pre-wrap; font-family: ui-monospace, monospace; '
        'font-size: 0.85em; line-height: 1.6">' + "".join(parts) + "</div>"
    )


def roc_spec(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float]
) -> dict[str, Any]:
    """ROC curves: {model: (fpr, tpr)}; the chance diagonal dashed."""
    values = [
        {"model": f"{m} (AUROC {aucs.get(m, float('nan')):.3f})", "fpr": float(x), "tpr": float(y)}
        for m, (fpr, tpr) in curves.items()
        for x, y in zip(fpr, tpr, strict=True)
    ]
    return {
        "width": "container",
        "height": 320,
        "layer": [
            {
                "data": {"values": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]},
                "mark": {"type": "line", "strokeDash": [4, 4], "color": "grey"},
                "encoding": {
                    "x": {"field": "x", "type": "quantitative"},
                    "y": {"field": "y", "type": "quantitative"},
                },
            },
            {
                "data": {"values": values},
                "mark": {"type": "line", "interpolate": "step-after"},
                "encoding": {
                    "x": {"field": "fpr", "type": "quantitative", "title": "1 - specificity"},
                    "y": {"field": "tpr", "type": "quantitative", "title": "sensitivity"},
                    "color": {
                        "field": "model",
                        "type": "nominal",
                        "legend": {"orient": "bottom", "columns": 2},
                    },
                    "tooltip": [
                        {"field": "model"},
                        {"field": "fpr", "format": ".3f"},
                        {"field": "tpr", "format": ".3f"},
                    ],
                },
                # zoom on one layer only: a top-level selection is copied into every layer
                # of a layered chart and Vega refuses the duplicate ("Duplicate signal name")
                "params": [{"name": "zoom", "select": "interval", "bind": "scales"}],
            },
        ],
    }


def calibration_spec(curve: dict[str, Any]) -> dict[str, Any]:
    """Calibration: binned observed proportions (with CIs), the flexible curve when fitted,
    and the ideal diagonal. ``curve`` is :func:`clinfuse.evaluation.calibration.calibration_curve`'s output."""
    bins = curve.get("bins") or {}
    points = [
        {
            "predicted": float(p),
            "observed": float(o),
            "low": float(lo),
            "high": float(hi),
            "n": int(n),
        }
        for p, o, lo, hi, n in zip(
            bins.get("mean_predicted", []),
            bins.get("observed", []),
            bins.get("observed_low", []),
            bins.get("observed_high", []),
            bins.get("n", []),
            strict=False,
        )
    ]
    layers: list[dict[str, Any]] = [
        {
            "data": {"values": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]},
            "mark": {"type": "line", "strokeDash": [4, 4], "color": "grey"},
            "encoding": {
                "x": {"field": "x", "type": "quantitative", "title": "predicted risk"},
                "y": {"field": "y", "type": "quantitative", "title": "observed proportion"},
            },
        },
        {
            "data": {"values": points},
            "mark": {"type": "rule"},
            "encoding": {
                "x": {"field": "predicted", "type": "quantitative"},
                "y": {"field": "low", "type": "quantitative"},
                "y2": {"field": "high"},
            },
        },
        {
            "data": {"values": points},
            "mark": {"type": "point", "filled": True},
            "encoding": {
                "x": {"field": "predicted", "type": "quantitative"},
                "y": {"field": "observed", "type": "quantitative"},
                "tooltip": [
                    {"field": "predicted", "format": ".3f"},
                    {"field": "observed", "format": ".3f"},
                    {"field": "n"},
                ],
            },
        },
    ]
    if curve.get("curve") is not None:
        layers.append(
            {
                "data": {
                    "values": [
                        {"x": float(x), "y": float(y)}
                        for x, y in zip(curve["grid"], curve["curve"], strict=True)
                    ]
                },
                "mark": {"type": "line", "color": _POS},
                "encoding": {
                    "x": {"field": "x", "type": "quantitative"},
                    "y": {"field": "y", "type": "quantitative"},
                },
            }
        )
    return {"width": "container", "height": 320, "layer": layers}


def decision_curve_spec(dca: dict[str, Any], max_threshold: float = 0.6) -> dict[str, Any]:
    """Net benefit against threshold for each model, treat-all and treat-none."""
    t = dca["thresholds"]
    values = [
        {"strategy": name, "threshold": float(x), "net_benefit": float(y)}
        for name, ys in dca["net_benefit"].items()
        for x, y in zip(t, ys, strict=True)
        if x <= max_threshold and y is not None and np.isfinite(y)
    ]
    floor = min([0.0, *[v["net_benefit"] for v in values if v["strategy"] != "treat_all"]]) - 0.05
    values = [v for v in values if v["net_benefit"] >= floor]
    return {
        "width": "container",
        "height": 320,
        "data": {"values": values},
        "mark": {"type": "line"},
        "encoding": {
            "x": {"field": "threshold", "type": "quantitative", "title": "threshold probability"},
            "y": {"field": "net_benefit", "type": "quantitative", "title": "net benefit"},
            "color": {"field": "strategy", "type": "nominal", "legend": {"orient": "bottom"}},
            "tooltip": [
                {"field": "strategy"},
                {"field": "threshold", "format": ".2f"},
                {"field": "net_benefit", "format": ".4f"},
            ],
        },
        "params": [{"name": "zoom", "select": "interval", "bind": "scales"}],
    }


def funnel_spec(funnel: dict[str, Any], grouping: str) -> dict[str, Any]:
    """Funnel plot of one grouping (:func:`clinfuse.evaluation.funnel.funnel_data`): each
    group's O/E against its expected events on a log scale, the model's 95 % (dashed) and
    99.8 % (dotted) limits, the groups outside them in red; with overdispersed groups, the
    additive random-effects limits in green."""
    from clinfuse.evaluation.funnel import funnel_limits

    groups = [g for g in funnel["groups"] if g["oe"] is not None]
    e = np.array([g["expected"] for g in groups], dtype=float)
    grid = np.geomspace(max(float(e.min()) / 2, 1.0), float(e.max()) * 1.5, 60)
    limits: list[dict[str, Any]] = []
    lines: list[str] = []
    dispersion = funnel.get("dispersion") or {}
    tau2s = [("", 0.0)]
    if dispersion.get("random_effects"):  # the additive random-effects limits too
        tau2s.append((", random effects", float(dispersion["tau2"])))
    for level in funnel["levels"]:
        for suffix, tau2 in tau2s:
            low, high = funnel_limits(grid, funnel["kappa"], level, tau2)
            for side, values in (("low", low), ("high", high)):
                name = f"{100 * level:g} % {side}{suffix}"
                lines.append(name)
                limits += [
                    {"expected": float(x), "oe": float(v), "line": name}
                    for x, v in zip(grid, values, strict=True)
                ]
    points = [
        {
            "group": str(g["group"]),
            "expected": g["expected"],
            "observed": g["observed"],
            "oe": g["oe"],
            "z": g["z"],
            "verdict": f"outside the {g['outside']} limits" if g["outside"] else "within",
            "random effects": (
                f"outside the {g['outside_random_effects']} limits"
                if g.get("outside_random_effects")
                else "within"
            ),
        }
        for g in groups
    ]
    x = {
        "field": "expected",
        "type": "quantitative",
        "scale": {"type": "log", "domain": [float(grid[0]), float(grid[-1])], "nice": False},
        "title": "expected events",
    }
    y = {
        "field": "oe",
        "type": "quantitative",
        "scale": {"zero": False},
        "title": "observed / expected",
    }
    return {
        "width": "container",
        "height": 320,
        "title": f"Funnel plot by {grouping}",
        "layer": [
            {
                "data": {"values": limits},
                "mark": {"type": "line", "strokeWidth": 1},
                "encoding": {
                    "x": x,
                    "y": y,
                    "detail": {"field": "line"},
                    "color": {
                        "condition": {
                            "test": "indexof(datum.line, 'random effects') >= 0",
                            "value": "#2ca02c",
                        },
                        "value": "grey",
                    },
                    "strokeDash": {
                        "field": "line",
                        "legend": None,
                        "scale": {
                            "domain": lines,
                            "range": [
                                [6, 3] if name.startswith("95 ") else [2, 2] for name in lines
                            ],
                        },
                    },
                },
            },
            {
                "data": {"values": [{"oe": 1.0}]},
                "mark": {"type": "rule", "color": "grey"},
                "encoding": {"y": y},
            },
            {
                "data": {"values": points},
                "mark": {"type": "point", "filled": True, "size": 70},
                "encoding": {
                    "x": x,
                    "y": y,
                    "color": {
                        "condition": {"test": "datum.verdict !== 'within'", "value": _POS},
                        "value": _NEG,
                    },
                    "tooltip": [
                        {"field": "group"},
                        {"field": "observed", "format": ".0f"},
                        {"field": "expected", "format": ".1f"},
                        {"field": "oe", "title": "O/E", "format": ".2f"},
                        {"field": "z", "format": "+.2f"},
                        {"field": "verdict"},
                        *(
                            [{"field": "random effects"}]
                            if dispersion.get("random_effects")
                            else []
                        ),
                    ],
                },
            },
            {
                "data": {"values": points},
                "mark": {"type": "text", "dx": 8, "align": "left", "fontSize": 11},
                "encoding": {"x": x, "y": y, "text": {"field": "group"}},
            },
        ],
    }
