"""Figures of explanations, drawn with matplotlib's object API on an Agg canvas.

No ``pyplot``: nothing here changes matplotlib's global backend or state, so
importing or calling these functions inside a notebook or Streamlit app has no
side effect. Each function writes one file atomically and returns its path.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "image_heatmap_png",
    "modality_importance_png",
    "modality_waterfall_png",
    "note_html",
    "note_tokens_png",
    "signal_overlay_png",
]

_POS = "#d62728"  # raises the risk
_NEG = "#1f77b4"  # lowers the risk


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)
    return path


def modality_waterfall_png(
    path: Path,
    *,
    case_id: str,
    base_value: float,
    phi: Mapping[str, float],
    present: Mapping[str, bool],
    risk: float | None = None,
) -> Path:
    """Waterfall of one case: base value → each modality's φ → fused logit."""
    names = sorted(phi, key=lambda m: abs(phi[m]))
    fig = _figure(6.0, 0.6 * len(names) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    start = base_value + sum(phi[m] for m in phi if m not in names)
    for k, m in enumerate(names):
        v = phi[m]
        ax.barh(k, v, left=start, color=_POS if v >= 0 else _NEG, height=0.6)
        label = f"{v:+.3f}" if present.get(m, True) else "missing"
        ax.text(
            start + v, k, f" {label}", va="center", ha="left" if v >= 0 else "right", fontsize=8
        )
        start += v
    ax.axvline(base_value, color="grey", lw=0.8, ls="--")
    ax.axvline(start, color="black", lw=1.0)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("fused logit")
    title = f"case {case_id}: base {base_value:.3f} → logit {start:.3f}"
    if risk is not None:
        title += f" (risk {risk:.1%})"
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def modality_importance_png(path: Path, importance: Mapping[str, Mapping[str, float]]) -> Path:
    """Bar chart of mean |φ| per modality with its bootstrap CI."""
    names = list(importance)
    means = np.array([importance[m]["mean_abs_phi"] for m in names], dtype=float)
    low = np.array([importance[m].get("ci_low", np.nan) for m in names], dtype=float)
    high = np.array([importance[m].get("ci_high", np.nan) for m in names], dtype=float)
    # a percentile bootstrap interval need not cover the estimate; error bars cannot be < 0
    err = np.clip(np.vstack([np.nan_to_num(means - low), np.nan_to_num(high - means)]), 0.0, None)
    fig = _figure(5.5, 0.5 * len(names) + 1.5)
    ax = fig.add_subplot(1, 1, 1)
    order = np.argsort(means)
    ax.barh(range(len(names)), means[order], xerr=err[:, order], color="#7f7f7f", capsize=3)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([names[i] for i in order])
    ax.set_xlabel("mean |φ| (fused logit), 95% CI")
    ax.set_title("modality importance", fontsize=9)
    return _save(fig, path)


def _rgba(value: float, scale: float) -> str:
    a = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    rgb = (214, 39, 40) if value >= 0 else (31, 119, 180)
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.85 * a:.3f})"


def note_html(tokens: Sequence[str], values: Sequence[float], *, title: str = "") -> str:
    """The note as HTML, each token shaded by its SHAP value (red raises, blue lowers the risk)."""
    vals = np.asarray(values, dtype=float)
    scale = float(np.max(np.abs(vals))) if len(vals) else 0.0
    spans = []
    for tok, v in zip(tokens, vals, strict=True):
        text = html.escape(str(tok)).replace("\n", "<br>")
        spans.append(
            f'<span title="{v:+.4f}" style="background:{_rgba(v, scale)};'
            f'border-radius:2px">{text}</span>'
        )
    head = f"<h3>{html.escape(title)}</h3>" if title else ""
    legend = (
        '<p style="font:12px sans-serif;color:#555">red: raises the note\'s risk, '
        "blue: lowers it; hover a word for its SHAP value (note logit).</p>"
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"></head>'
        f'<body style="max-width:50em;font:14px/1.6 sans-serif">{head}{legend}'
        f'<div style="white-space:pre-wrap">{"".join(spans)}</div></body></html>'
    )


def note_tokens_png(
    path: Path, tokens: Sequence[str], values: Sequence[float], top: int = 15
) -> Path:
    """Horizontal bars of the ``top`` tokens with the largest |SHAP value|."""
    vals = np.asarray(values, dtype=float)
    order = np.argsort(-np.abs(vals))[:top][::-1]
    fig = _figure(5.5, 0.3 * len(order) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(order)), vals[order], color=[_POS if vals[i] >= 0 else _NEG for i in order])
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([repr(str(tokens[i]).strip())[1:-1] or "␣" for i in order], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("SHAP value (note logit)")
    ax.set_title("note: most influential tokens", fontsize=9)
    return _save(fig, path)


def image_heatmap_png(
    path: Path, image: np.ndarray, heatmap: np.ndarray, *, method: str = "", max_slices: int = 4
) -> Path:
    """The image with its attribution overlaid; 3-D volumes show the slices with most mass.

    Args:
        image: (C, X, Y) or (C, X, Y, Z) in MONAI order; drawn transposed so rows
            run down as in the DICOM.
        heatmap: (X, Y) or (X, Y, Z) signed attribution.
    """
    img = np.asarray(image, dtype=float).mean(axis=0)
    heat = np.asarray(heatmap, dtype=float)
    if heat.ndim == 2:
        slices = [None]
    else:
        mass = np.abs(heat).sum(axis=(0, 1))
        slices = sorted(np.argsort(-mass)[:max_slices].tolist())
    scale = float(np.max(np.abs(heat))) or 1.0
    fig = _figure(3.2 * len(slices), 3.4)
    for k, z in enumerate(slices):
        ax = fig.add_subplot(1, len(slices), k + 1)
        im2 = img if z is None else img[..., z]
        h2 = heat if z is None else heat[..., z]
        ax.imshow(im2.T, cmap="gray", interpolation="nearest")
        ax.imshow(h2.T, cmap="bwr", vmin=-scale, vmax=scale, alpha=0.55, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title("image" if z is None else f"slice {z}", fontsize=9)
    fig.suptitle(f"image attribution ({method}); red raises the risk", fontsize=9)
    return _save(fig, path)


def signal_overlay_png(
    path: Path,
    signal: np.ndarray,
    segment_values: np.ndarray,
    segments: np.ndarray,
    *,
    fs: float,
    lead_names: Sequence[str],
    method: str = "",
) -> Path:
    """Each lead's waveform with its time segments shaded by attribution."""
    sig = np.asarray(signal, dtype=float)
    seg_vals = np.asarray(segment_values, dtype=float)
    n_leads = sig.shape[0]
    t = np.arange(sig.shape[1]) / fs
    scale = float(np.max(np.abs(seg_vals))) or 1.0
    fig = _figure(8.0, 1.6 * n_leads + 0.8)
    for k in range(n_leads):
        ax = fig.add_subplot(n_leads, 1, k + 1)
        for s, (a, b) in enumerate(np.asarray(segments)):
            v = seg_vals[k, s]
            ax.axvspan(
                a / fs, b / fs, color=_POS if v >= 0 else _NEG, alpha=0.6 * abs(v) / scale, lw=0
            )
        ax.plot(t, sig[k], color="black", lw=0.7)
        ax.set_ylabel(str(lead_names[k]) if k < len(lead_names) else f"lead {k}", fontsize=8)
        if k < n_leads - 1:
            ax.set_xticklabels([])
    fig.axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"signal attribution per segment ({method}); red raises the risk", fontsize=9)
    return _save(fig, path)
