"""Report figures, drawn with matplotlib's object API on an Agg canvas.

No ``pyplot``: nothing here touches matplotlib's global backend or state, so
importing or calling it has no side effect on the user's session. Each
function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure`
writes it as PNG and SVG and returns the PNG bytes for embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "calibration_figure",
    "cusum_figure",
    "decision_curve_figure",
    "funnel_figure",
    "monitoring_figure",
    "over_time_figure",
    "period_figure",
    "reliability_figure",
    "risk_distribution_figure",
    "roc_figure",
    "save_figure",
    "subgroup_figure",
    "trials_figure",
]

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _figure(width: float = 5.5, height: float = 4.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, folder: Path, name: str) -> bytes:
    """Write ``name.png`` and ``name.svg`` into ``folder``; return the PNG bytes."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    (folder / f"{name}.png").write_bytes(data)
    fig.savefig(folder / f"{name}.svg", format="svg")
    return data


def roc_figure(y: np.ndarray, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    """ROC curves; ``scores`` maps a label to ``(y, p)`` (each model on its own cases)."""
    from sklearn.metrics import roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    for k, (label, (yy, pp)) in enumerate(scores.items()):
        if len(np.unique(yy)) < 2:
            continue
        fpr, tpr, _ = roc_curve(yy, pp)
        ax.plot(fpr, tpr, color=COLORS[k % len(COLORS)], lw=2 if k == 0 else 1.2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(
        xlabel="1 − specificity", ylabel="sensitivity", title="ROC curves", xlim=(0, 1), ylim=(0, 1)
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "AUROC undefined: one outcome class", ha="center", va="center")
    return fig


def calibration_figure(curve: dict[str, Any], p: np.ndarray) -> Any:
    """Flexible calibration curve with its band, binned observed rates, and a risk rug."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="ideal")
    if curve.get("curve") is not None:
        ax.fill_between(
            curve["grid"],
            curve["curve_low"],
            curve["curve_high"],
            color=COLORS[0],
            alpha=0.2,
            label="95 % CI",
        )
        ax.plot(curve["grid"], curve["curve"], color=COLORS[0], lw=2, label="flexible calibration")
    bins = curve["bins"]
    if len(bins["n"]):
        yerr = np.vstack(
            [bins["observed"] - bins["observed_low"], bins["observed_high"] - bins["observed"]]
        )
        ax.errorbar(
            bins["mean_predicted"],
            bins["observed"],
            yerr=yerr,
            fmt="o",
            color=COLORS[1],
            ms=4,
            capsize=2,
            label="risk groups (Wilson 95 % CI)",
        )
    ax.plot(p, np.full(len(p), -0.02), "|", color="black", alpha=0.3, ms=6)
    ax.set(
        xlabel="predicted risk",
        ylabel="observed proportion",
        title="Calibration",
        xlim=(0, 1),
        ylim=(-0.04, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    return fig


def calibration_overlay_figure(curves: dict[str, dict[str, Any]]) -> Any:
    """Flexible calibration curves of several models on the same cases (no bands)."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="ideal")
    for k, (name, curve) in enumerate(curves.items()):
        if curve.get("curve") is not None:
            color = COLORS[k % len(COLORS)]
            ax.plot(curve["grid"], curve["curve"], color=color, lw=2 if k == 0 else 1.2, label=name)
    ax.set(
        xlabel="predicted risk",
        ylabel="observed proportion",
        title="Calibration (flexible curves)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    return fig


def forest_figure(
    crossval: dict[str, Any], *, title: str = "AUROC by held-out fold", by: str | None = None
) -> Any:
    """Each fold's (or group's) AUROC with its DeLong CI; below, the fold mean or, for
    groups, the random-effects summary with its CI (diamond) and prediction interval.

    ``by``: label each row with this key alone (e.g. ``group`` for sites)."""
    rows = [r for r in crossval["per_fold"] if r["auroc"] is not None]
    if by is not None:
        labels = [str(r[by]) for r in rows]
    else:
        labels = [
            f"{r['fold']}: {r['group']}" if "group" in r else f"fold {r['fold']}" for r in rows
        ]
    meta = (crossval.get("meta_analysis") or {}).get("auroc")
    fig = _figure(5.5, 1.2 + 0.35 * (len(rows) + 2))
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        y = len(rows) - i
        if r["auroc"] is None:
            continue  # one outcome class: no AUROC to draw
        if r["auroc_ci_low"] is not None:  # none with a single event or non-event
            ax.plot([r["auroc_ci_low"], r["auroc_ci_high"]], [y, y], color=COLORS[0], lw=1.5)
        size = 4 + 6 * np.sqrt(r["n_cases"] / max(x["n_cases"] for x in rows))
        ax.plot(r["auroc"], y, "s", color=COLORS[0], ms=size)
    ticks = [len(rows) - i for i in range(len(rows))]
    if meta:
        est, lo, hi = meta["estimate"], meta["ci_low"], meta["ci_high"]
        ax.fill([lo, est, hi, est], [0, 0.25, 0, -0.25], color=COLORS[1], label="summary (95 % CI)")
        if meta["pi_low"] is not None:
            ax.plot(
                [meta["pi_low"], meta["pi_high"]],
                [-0.6, -0.6],
                color=COLORS[1],
                lw=1,
                ls="--",
                label="prediction interval",
            )
        labels.append("random effects")
        ticks.append(0)
        ax.axvline(est, color=COLORS[1], lw=0.8, ls=":")
    elif crossval["across_folds"]["auroc"]["mean"] is not None:
        mean = crossval["across_folds"]["auroc"]["mean"]
        ax.axvline(mean, color=COLORS[1], lw=1, ls=":", label=f"fold mean {mean:.3f}")
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(ticks, labels)
    lows = [r["auroc_ci_low"] for r in rows if r["auroc_ci_low"] is not None]
    lows += [r["auroc"] for r in rows if r["auroc"] is not None]
    lows += [meta["pi_low"]] if meta and meta["pi_low"] else []
    left = max(0.0, min([0.3, *lows]) - 0.02)
    ax.set(xlabel="AUROC (DeLong 95 % CI)", title=title, xlim=(left, 1.0))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    return fig


def period_figure(rows: list[dict[str, Any]], *, title: str, xlabel: str | None = None) -> Any:
    """O/E with its interval (top) and AUROC with its DeLong interval (bottom) for a
    sequence of periods: each row holds ``period``, ``n`` and ``oe``/``auroc`` as
    ``{value, ci_low, ci_high}`` (a suppressed row, or a missing value, is left blank); the
    case count is printed under each period."""
    x = np.arange(len(rows))
    fig = _figure(min(14.0, max(5.5, 0.45 * len(rows) + 2)), 5.2)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, key, ref, label in (
        (top, "oe", 1.0, "O/E (95 % CI)"),
        (bottom, "auroc", 0.5, "AUROC (DeLong 95 % CI)"),
    ):
        for i, r in enumerate(rows):
            stat = None if r.get("suppressed") else r.get(key)
            if not stat or stat.get("value") is None:
                continue
            if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
                ax.plot([i, i], [stat["ci_low"], stat["ci_high"]], color=COLORS[0], lw=1.5)
            ax.plot(i, stat["value"], "o", color=COLORS[0], ms=5)
        ax.axhline(ref, color="grey", lw=0.8, ls="--")
        ax.set_ylabel(label)
    many = len(rows) > 24  # e.g. years of months: labels turned, counts in the table only
    bottom.set_xticks(
        x,
        [r["period"] if many else f"{r['period']}\nn={r['n']}" for r in rows],
        fontsize=6 if many else 7,
        rotation=90 if many else 0,
    )
    if xlabel:
        bottom.set_xlabel(xlabel)
    top.set_title(title)
    return fig


def over_time_figure(over_time: dict[str, Any]) -> Any:
    """:func:`period_figure` of one evaluation's periods (``metrics["over_time"]``)."""
    return period_figure(
        over_time["periods"],
        title=f"Performance by {over_time['period']} ({over_time['column']})",
    )


def cusum_figure(cusum: Any, *, column: str | None = None) -> Any:
    """The risk-adjusted CUSUM charts of a :class:`clinfuse.evaluation.cusum.Cusum` against
    the cases' dates: a chart watching for more events than predicted above the axis, one
    for fewer below it (drawn negative), each with its control limit, its signals and the
    change estimated at each (a dotted line, its confidence span shaded); below them the
    variable life-adjusted display, the cumulative observed minus expected events."""
    import matplotlib.dates as mdates

    fig = _figure(8.0, 5.8)
    ax, low = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    x = cusum.dates.astype("datetime64[ms]").astype(object)
    for k, chart in enumerate(cusum.charts):
        sign = 1.0 if chart.odds_ratio > 1 else -1.0
        color = COLORS[3] if sign > 0 else COLORS[0]
        label = f"odds × {chart.odds_ratio:g}: {chart.direction}"
        ax.step(x, sign * chart.path, where="post", color=color, lw=1, label=label)
        ax.axhline(sign * chart.limit, color=color, lw=0.8, ls="--")
        ends = [end for _, end in chart.signals]
        if ends:
            ax.plot(
                [x[t] for t in ends],
                sign * chart.path[ends],
                "v" if sign < 0 else "^",
                color=color,
                ms=7,
                label=f"{len(ends)} signal{'s' * (len(ends) > 1)}",
                zorder=3 + k,
            )
        for j, change in enumerate(chart.changes):  # shaded: the change's confidence span
            first = chart.signals[j - 1][1] + 1 if j else 0
            ax.axvspan(
                x[first + change.low],
                x[first + change.high],
                color=color,
                alpha=0.12,
                lw=0,
                label="estimated change (95 % CI)" if j == 0 else None,
            )
            ax.axvline(x[first + change.index], color=color, lw=0.8, ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(
        ylabel="CUSUM (log-likelihood ratio)",
        title=f"Risk-adjusted CUSUM, {len(x)} cases in date order "
        f"(limits: {100 * cusum.false_alarm:g} % false alarm)",
    )
    ax.legend(loc="upper left", fontsize=7)
    low.step(x, cusum.excess, where="post", color=COLORS[4], lw=1)
    low.axhline(0, color="grey", lw=0.8)
    low.xaxis.set_major_formatter(mdates.ConciseDateFormatter(low.xaxis.get_major_locator()))
    low.set(xlabel=column or "date", ylabel="observed − expected\nevents (cumulative)")
    return fig


def monitoring_figure(summary: dict[str, Any]) -> Any:
    """Three panels by period of a monitoring summary (``monitoring.json``): mean risk and
    the alert rate at the first threshold, the PSI of the fused logit and of each modality's
    risk (with the 0.1 and 0.25 lines), and each modality's availability; the development
    values dashed. Periods not compared are left blank."""
    rows = summary["periods"]
    dev = summary["development"]
    x = np.arange(len(rows))
    shown = [i for i, r in enumerate(rows) if not r["suppressed"]]
    fig = _figure(min(14.0, max(6.5, 0.4 * len(rows) + 2.5)), 7.0)
    risk_ax, psi_ax, avail_ax = fig.subplots(3, 1, sharex=True)

    def line(ax: Any, values: list[Any], color: str, label: str) -> None:
        ax.plot(
            shown,
            [np.nan if v is None else v for v in values],
            "o-",
            color=color,
            ms=3,
            lw=1,
            label=label,
        )

    t = f"{summary['thresholds'][0]:g}"
    line(risk_ax, [rows[i]["mean_risk"] for i in shown], COLORS[0], "mean risk")
    line(risk_ax, [rows[i]["alert_rate"][t] for i in shown], COLORS[3], f"share ≥ {t}")
    risk_ax.axhline(dev["mean_risk"], color=COLORS[0], lw=0.8, ls="--")
    risk_ax.axhline(dev["alert_rate"][t], color=COLORS[3], lw=0.8, ls="--")
    risk_ax.set_ylabel("risk")
    risk_ax.legend(loc="upper left", fontsize=7)
    line(psi_ax, [rows[i]["psi_fusion"]["value"] for i in shown], "black", "fused logit")
    mods = list(dev["availability"])
    for k, m in enumerate(mods):
        color = COLORS[k % len(COLORS)]
        line(psi_ax, [rows[i]["psi"][m]["value"] for i in shown], color, m)
        line(avail_ax, [rows[i]["availability"][m]["value"] for i in shown], color, m)
        avail_ax.axhline(dev["availability"][m], color=color, lw=0.8, ls="--")
    for level in (0.1, 0.25):
        psi_ax.axhline(level, color="grey", lw=0.8, ls=":")
    psi_ax.set_ylabel("PSI vs development")
    psi_ax.legend(loc="upper left", fontsize=7, ncol=max(1, len(mods) + 1))
    avail_ax.set_ylabel("share with modality")
    avail_ax.set_ylim(-0.02, 1.02)
    many = len(rows) > 24
    avail_ax.set_xticks(
        x,
        [r["period"] if many else f"{r['period']}\nn={r['n']}" for r in rows],
        fontsize=6 if many else 7,
        rotation=90 if many else 0,
    )
    risk_ax.set_title(
        f"Monitoring by {summary['period']} ({summary['column']}); dashed: development"
    )
    return fig


def _flag_subject(flag: str) -> str:
    """What a monitoring flag is about: ``crp: mean shifted ...`` → ``crp``, ``image
    available in ...`` → ``image``, ``fused risk distribution: ...`` → ``fused risk``."""
    head = flag.split(":", 1)[0] if ":" in flag else flag.split(" ", 1)[0]
    return head.removesuffix(" distribution")


def monitoring_sites_figure(summary: dict[str, Any]) -> Any:
    """One panel per compared site of a monitoring summary (``monitoring.json → by_site``):
    each modality's availability and the mean risk by period, the site's development values
    dashed, flagged periods shaded and labelled with what was flagged. None without compared
    sites."""
    by = summary.get("by_site")
    sites = [] if not by else by["sites"]
    if not sites:
        return None
    rows0 = sites[0]["periods"]
    x = np.arange(len(rows0))
    fig = _figure(min(14.0, max(6.5, 0.4 * len(rows0) + 2.5)), 1.0 + 2.0 * len(sites))
    axes = np.atleast_1d(fig.subplots(len(sites), 1, sharex=True))
    mods = list(summary["development"]["availability"])
    for ax, entry in zip(axes, sites, strict=True):
        rows = entry["periods"]
        shown = [i for i, r in enumerate(rows) if not r["suppressed"]]
        dev = entry["development"]
        for i in shown:
            if rows[i]["flags"]:  # shaded, with what was flagged ("crp", "image", ...)
                ax.axvspan(i - 0.45, i + 0.45, color=COLORS[3], alpha=0.15, lw=0)
                what = sorted({_flag_subject(f) for f in rows[i]["flags"]})
                ax.text(
                    i,
                    0.5,
                    ", ".join(what),
                    ha="center",
                    va="center",
                    fontsize=6,
                    rotation=90,
                    color=COLORS[3],
                )
        for k, m in enumerate(mods):
            color = COLORS[k % len(COLORS)]
            values = [rows[i]["availability"][m]["value"] for i in shown]
            ax.plot(shown, values, "o-", color=color, ms=3, lw=1, label=f"with {m}")
            ax.axhline(dev["availability"][m], color=color, lw=0.8, ls="--")
        ax.plot(
            shown,
            [rows[i]["mean_risk"] for i in shown],
            "s-",
            color="black",
            ms=3,
            lw=1,
            label="mean risk",
        )
        ax.axhline(dev["mean_risk"], color="black", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.05)
        against = "its own" if entry["reference"] == "site" else "all"
        ax.set_title(
            f"{entry['site']}: {entry['n']} cases, against {against} {entry['n_reference']} "
            f"development cases; {entry['n_flagged_periods']} flagged",
            fontsize=8,
        )
    axes[0].legend(loc="lower left", fontsize=7, ncol=len(mods) + 1)
    many = len(rows0) > 24
    axes[-1].set_xticks(
        x, [r["period"] for r in rows0], fontsize=6 if many else 7, rotation=90 if many else 0
    )
    return fig


def reliability_figure(table: dict[str, np.ndarray], ece: float | None) -> Any:
    """Equal-width reliability diagram behind the ECE (secondary)."""
    fig = _figure(5.0, 4.0)
    ax = fig.add_subplot()
    centres = (table["bin_low"] + table["bin_high"]) / 2
    ok = table["n"] > 0
    ax.bar(
        centres[ok], table["observed"][ok], width=0.09, color=COLORS[0], alpha=0.6, label="observed"
    )
    ax.plot(
        centres[ok], table["mean_predicted"][ok], "o", color=COLORS[1], ms=4, label="mean predicted"
    )
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(
        xlabel="predicted risk bin",
        ylabel="proportion",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Reliability (no cases)"
        if ece is None
        else f"Reliability (ECE = {ece:.3f}, 10 equal-width bins)",
    )
    ax.legend(loc="upper left", fontsize=8)
    return fig


def decision_curve_figure(
    dca: dict[str, Any], prevalence: float, *, highlight: str = "fusion"
) -> Any:
    """Net benefit against threshold, with treat-all and treat-none (``highlight`` drawn bold)."""
    fig = _figure()
    ax = fig.add_subplot()
    t = np.asarray(dca["thresholds"])
    styles = {"treat_all": ("treat all", "grey", "--"), "treat_none": ("treat none", "black", ":")}
    k = 0
    for name, nb in dca["net_benefit"].items():
        label, color, ls = styles.get(name, (name, COLORS[k % len(COLORS)], "-"))
        if name not in styles:
            k += 1
        ax.plot(t, nb, color=color, ls=ls, lw=2 if name == highlight else 1.2, label=label)
    top = max(prevalence, 0.02) * 1.15
    ax.set(
        xlabel="risk threshold",
        ylabel="net benefit",
        title="Decision curve",
        ylim=(-0.05 * max(top, 0.2), top),
        xlim=(0, min(1.0, float(t.max()))),
    )
    ax.legend(loc="upper right", fontsize=8)
    return fig


def risk_distribution_figure(y: np.ndarray, p: np.ndarray) -> Any:
    """Histograms of predicted risk for events and non-events."""
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 26)
    y = np.asarray(y, dtype=bool)
    for sel, label, color in ((~y, "non-events", COLORS[0]), (y, "events", COLORS[3])):
        if sel.any():
            ax.hist(
                p[sel],
                bins=bins,
                alpha=0.55,
                color=color,
                density=True,
                label=f"{label} (n = {int(sel.sum())})",
            )
    ax.set(
        xlabel="predicted risk", ylabel="density", title="Risk distribution by outcome", xlim=(0, 1)
    )
    ax.legend(fontsize=8)
    return fig


def funnel_figure(results: dict[str, dict[str, Any]]) -> Any:
    """One funnel plot per grouping with two or more reported groups: each group's O/E
    against its expected events, with the model's 95 % and 99.8 % limits
    (:mod:`clinfuse.evaluation.funnel`); a group outside them is labelled in colour."""
    import matplotlib.ticker as ticker

    from clinfuse.evaluation.funnel import drawable_funnels, funnel_limits

    shown = drawable_funnels(results)
    fig = _figure(4.2 * max(len(shown), 1), 3.8)
    for k, (name, funnel) in enumerate(shown.items()):
        ax = fig.add_subplot(1, len(shown), k + 1)
        groups = [g for g in funnel["groups"] if g["oe"] is not None]
        e = np.array([g["expected"] for g in groups])
        lo_e, hi_e = max(e.min() / 2, 1.0), e.max() * 1.5
        grid = np.geomspace(lo_e, hi_e, 200)
        d = funnel.get("dispersion") or {}
        for level, style in zip(funnel["levels"], ("--", ":"), strict=False):
            low, high = funnel_limits(grid, funnel["kappa"], level)
            ax.plot(grid, low, color="grey", ls=style, lw=1, label=f"{100 * level:g} % limits")
            ax.plot(grid, high, color="grey", ls=style, lw=1)
            if d.get("random_effects"):  # the additive random-effects limits
                low, high = funnel_limits(grid, funnel["kappa"], level, d["tau2"])
                label = f"{100 * level:g} %, random effects"
                ax.plot(grid, low, color=COLORS[2], ls=style, lw=1, label=label)
                ax.plot(grid, high, color=COLORS[2], ls=style, lw=1)
        ax.axhline(1.0, color="grey", lw=0.8)
        overall = funnel["overall"]["oe"]
        if overall is not None:
            ax.axhline(
                overall, color=COLORS[1], lw=0.8, ls="-.", label=f"overall O/E {overall:.2f}"
            )
        for g in groups:
            color = COLORS[3] if g["outside"] else COLORS[0]
            ax.plot(g["expected"], g["oe"], "o", color=color, ms=5)
            ax.annotate(
                str(g["group"]),
                (g["expected"], g["oe"]),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                color=color,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set(xlabel="expected events", ylabel="observed / expected", title=f"by {name}")
        ax.legend(loc="upper right", fontsize=6)
    if not shown:
        fig.add_subplot().set_axis_off()
    fig.suptitle("Funnel plots: events against the model's expectation", fontsize=10)
    return fig


def subgroup_figure(results: dict[str, dict[str, Any]]) -> Any:
    """Forest plot of AUROC (DeLong 95 % CI) per reported group of every grouping."""
    labels, vals, lows, highs = [], [], [], []
    for grouping, res in results.items():
        for r in res["groups"]:
            if r["suppressed"] or r["auroc"]["value"] is None:
                continue
            labels.append(f"{grouping} = {r['group']}")
            value = r["auroc"]["value"]
            vals.append(value)
            # no DeLong interval with a single event or non-event: the point alone
            lows.append(value if r["auroc"]["ci_low"] is None else r["auroc"]["ci_low"])
            highs.append(value if r["auroc"]["ci_high"] is None else r["auroc"]["ci_high"])
    fig = _figure(5.5, 1.2 + 0.3 * max(len(labels), 1))
    ax = fig.add_subplot()
    if labels:
        pos = np.arange(len(labels))[::-1]
        v = np.asarray(vals)
        ax.errorbar(
            v,
            pos,
            # a CI that does not cover its estimate (rounding) must not make matplotlib raise
            xerr=np.clip([v - np.asarray(lows), np.asarray(highs) - v], 0.0, None),
            fmt="o",
            color=COLORS[0],
            capsize=2,
        )
        ax.set_yticks(pos, labels, fontsize=8)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set(xlabel="AUROC (DeLong 95 % CI)", title="AUROC by subgroup and site", xlim=(0, 1))
    return fig


def trials_figure(summary: dict[str, Any]) -> Any:
    """A hyperparameter search (``tuning.json``): each trial's pooled out-of-fold metric
    (square; the chosen one filled) and its folds' values (dots); with successive halving,
    trials stopped at an earlier rung in grey, at that rung's epochs; with a nested
    cross-validation, its estimate of the whole search (dashed)."""
    metric = summary["metric"]
    trials = summary["trials"]
    best = summary["best"]["trial"]
    halving = summary.get("halving")
    last = halving["rungs"][-1]["rung"] if halving else None

    def label(values: dict[str, Any]) -> str:
        text = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())
        return text if len(text) <= 48 else text[:47] + "…"

    fig = _figure(6.5, 1.4 + 0.32 * len(trials))
    ax = fig.add_subplot()
    for i, r in enumerate(trials):
        y = len(trials) - i
        ax.plot(r["per_fold"], [y] * len(r["per_fold"]), "o", color="grey", ms=3, alpha=0.7)
        chosen = r["trial"] == best
        stopped = halving is not None and r["rung"] != last
        ax.plot(
            r[metric],
            y,
            "s",
            color=COLORS[1] if chosen else "grey" if stopped else COLORS[0],
            mfc=COLORS[1] if chosen else "white",
            ms=7,
            label="chosen trial" if chosen else None,
        )
    nested = summary.get("nested")
    if nested:
        ax.axvline(
            nested["pooled"],
            color=COLORS[3],
            ls="--",
            lw=1,
            label=f"nested {nested['outer_folds']}-fold estimate {nested['pooled']:.3f}",
        )
    ax.set_yticks(
        [len(trials) - i for i in range(len(trials))],
        [
            f"{r['trial']}: {label(r['values'])}"
            + (f" ({r['epochs']} ep.)" if halving and r["rung"] != last else "")
            for r in trials
        ],
        fontsize=8,
    )
    better = "higher is better" if summary["higher_is_better"] else "lower is better"
    ax.set(
        xlabel=f"{metric}, pooled out of fold (square) and per fold (dots); {better}",
        title=f"{len(trials)} trials, {summary['folds']}-fold cross-validation each",
    )
    ax.legend(loc="best", fontsize=8)
    return fig
