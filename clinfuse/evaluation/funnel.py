"""Funnel plots: is any site's (or subgroup's) count of events out of line with the model?

The clinical-audit display of Spiegelhalter (Stat Med 2005;24:1185–1202), risk-adjusted by
the model: for each reported group, ``O`` events were observed where the model's risks
expected ``E = Σ p``. Were the model right for that group, ``O`` would be a sum of
independent Bernoulli outcomes with mean ``E`` and variance ``V = Σ p (1 − p)``, so
``z = (O − E) / √V`` is about standard normal. A group lies outside the 95 % limits when
``|z| > 1.96`` and outside the 99.8 % limits when ``|z| > 3.09`` (the "alert" and "alarm"
levels of national audits). The funnel draws each group's O/E against its ``E`` with the
limits ``1 ± z_α · √(κ E) / E``, ``κ = V / E`` of the whole cohort; they narrow as a group
grows, so a small group is not flagged for noise and a large one cannot hide.

Overdispersion: with every group consistent with the model, ``Σ z²`` over the ``k`` groups is
χ² with ``k`` degrees of freedom (the groups are disjoint): a small p-value says the groups
differ more than the model allows — a global miscalibration shifts them all one way, a
between-group difference spreads them. The multiplicative overdispersion factor ``φ`` is the
mean of the ``z²`` Winsorized at the 10th and 90th centiles of ``z`` (so the outliers being
judged do not inflate it). With at least :data:`MIN_GROUPS_DISPERSION` groups and ``φ > 1``,
the verdict against limits widened by ``√φ`` is also given, as Spiegelhalter advises before a
group is named an outlier; with fewer groups ``φ`` is too unstable to widen anything.

The additive alternative (random effects; Spiegelhalter 2005 §4.2, as in the NHS's SHMI):
the groups' true O/E spread around the target with variance ``τ²``, estimated by the
DerSimonian–Laird moment ``τ² = max(0, (Q − (k − 1)) / (Σw − Σw²/Σw))``, ``w = E²/V`` the
inverse of a group's O/E variance, from the same Winsorized ``z``: ``Q = k·φ / c`` with
``c = 0.679``, the mean of a Winsorized squared standard normal, so that Winsorizing does not
bias ``τ²`` down when no group is an outlier (40 simulated cohorts of 60 groups of 50–5,000
cases whose true O/E spread with SD 0.1: without ``c``, ``τ²`` came out 0.003 for a true
0.01 and 12.5 % of the groups fell outside the 95 % limits; with it, 0.006 and 7.5 %, and
three groups at O/E 1.5 among them were still flagged in 92 % of cohorts). Each
group's ``z`` becomes ``(O/E − 1) / √(V/E² + τ²)`` and the limits ``1 ± z_α · √(κ/E + τ²)``:
unlike ``√φ``, ``τ²`` widens the limits of large groups most, whose own noise is small (a
large site's true difference is not a "special cause" for being estimated precisely). It is
given with at least :data:`MIN_GROUPS_DISPERSION` groups and ``τ² > 0``.

The target is O/E = 1 (the model's own expectation), not the cohort's overall O/E: a model
miscalibrated for the whole cohort puts every group on one side; the overall O/E is reported
beside the groups.

>>> funnel = funnel_data(y, p, sites)  # doctest: +SKIP
>>> [(g["group"], round(g["z"], 2), g["outside"]) for g in funnel["groups"]]  # doctest: +SKIP
[('A', 0.41, None), ('B', -3.4, '99.8 %'), ('C', 1.2, None)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LEVELS", "MIN_GROUPS_DISPERSION", "drawable_funnels", "funnel_data", "funnel_limits"]

LEVELS = (0.95, 0.998)
"""The two limits drawn: the "alert" (95 %) and "alarm" (99.8 %) levels of clinical audit."""

MIN_GROUPS_DISPERSION = 10
"""Fewest groups whose overdispersion widens the limits."""


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def funnel_limits(
    expected: np.ndarray, kappa: float, level: float, tau2: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The O/E limits at ``level`` for groups expecting ``expected`` events, with variance
    ``kappa × expected`` and, for the additive random-effects limits, a between-group
    variance ``tau2`` of the O/E (see the module's docstring); the lower limit stops at 0."""
    e = np.asarray(expected, dtype=float)
    half = _z(level) * np.sqrt(kappa / e + tau2)
    return np.maximum(1.0 - half, 0.0), 1.0 + half


def funnel_data(
    y: np.ndarray,
    p: np.ndarray,
    groups: Sequence[Any],
    *,
    levels: Sequence[float] = LEVELS,
) -> dict[str, Any]:
    """Each group's observed and expected events, ``z`` and the limits it lies outside.

    Args:
        y: (N,) 0/1 outcomes of the cases of the groups shown (suppressed groups left out).
        p: (N,) the model's calibrated risks.
        groups: (N,) each case's group.
        levels: the limits, narrowest first.

    Returns:
        ``target`` (1), ``levels``, ``kappa``, ``overall`` (O, E, O/E), ``dispersion``
        (``phi``, ``chi2``, ``df``, ``p_value``, ``widened``, ``tau2``, ``random_effects``;
        None with fewer than two groups), and ``groups``: per group ``observed``,
        ``expected``, ``variance``, ``oe``, ``z``, ``outside`` (the widest level whose
        limits it lies beyond, as ``"95 %"``, or None), ``outside_overdispersed`` (the same
        against limits widened by ``√φ``, when ``widened``; otherwise equal to
        ``outside``), and ``z_random_effects`` and ``outside_random_effects`` (against the
        additive random-effects limits with ``tau2``, when ``random_effects``; otherwise
        ``z`` and ``outside``).
    """
    from scipy.stats import chi2

    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    labels = np.asarray([str(g) for g in groups], dtype=object)
    levels = sorted(float(level) for level in levels)
    rows = []
    for name in sorted(set(labels)):
        sel = labels == name
        o, e = float(y[sel].sum()), float(p[sel].sum())
        v = float(np.sum(p[sel] * (1.0 - p[sel])))
        z = (o - e) / np.sqrt(v) if v > 0 else 0.0
        rows.append(
            {
                "group": name,
                "n_cases": int(sel.sum()),
                "observed": o,
                "expected": e,
                "variance": v,
                "oe": o / e if e > 0 else None,
                "z": float(z),
            }
        )
    k = len(rows)
    dispersion = None
    widen = 1.0
    if k >= 2:
        z = np.array([r["z"] for r in rows])
        total = float(np.sum(z**2))
        phi = float(np.mean(np.clip(z, *np.percentile(z, [10, 90])) ** 2))
        widened = k >= MIN_GROUPS_DISPERSION and phi > 1
        widen = float(np.sqrt(phi)) if widened else 1.0
        tau2 = _tau2(rows, phi)
        dispersion = {
            "phi": phi,
            "chi2": total,
            "df": k,
            "p_value": float(chi2.sf(total, k)),
            "widened": widened,
            "tau2": tau2,
            "random_effects": k >= MIN_GROUPS_DISPERSION and tau2 > 0,
        }
    for r in rows:
        r["outside"] = _outside(abs(r["z"]), levels)
        r["outside_overdispersed"] = _outside(abs(r["z"]) / widen, levels)
        z_re = r["z"]
        if dispersion is not None and dispersion["random_effects"] and r["expected"] > 0:
            s2 = r["variance"] / r["expected"] ** 2
            z_re = (r["observed"] / r["expected"] - 1.0) / np.sqrt(s2 + dispersion["tau2"])
        r["z_random_effects"] = float(z_re)
        r["outside_random_effects"] = _outside(abs(z_re), levels)
    e_all = float(p.sum())
    return {
        "method": "risk-adjusted funnel plot (Spiegelhalter 2005), target O/E = 1",
        "target": 1.0,
        "levels": levels,
        "kappa": float(np.sum(p * (1.0 - p)) / e_all) if e_all > 0 else None,
        "overall": {
            "observed": float(y.sum()),
            "expected": e_all,
            "oe": float(y.sum()) / e_all if e_all > 0 else None,
        },
        "dispersion": dispersion,
        "groups": rows,
    }


_WINSORIZED_SQUARE = 0.6786545589528744
"""E[W²] for a standard normal W Winsorized at its 10th and 90th centiles."""


def _tau2(rows: list[dict[str, Any]], phi: float) -> float:
    """The additive between-group variance of the O/E (see the module's docstring)."""
    w = np.array([r["expected"] ** 2 / r["variance"] for r in rows if r["variance"] > 0])
    k = len(w)
    if k < 2:
        return 0.0
    q = len(rows) * phi / _WINSORIZED_SQUARE
    return float(max(0.0, (q - (k - 1)) / (w.sum() - np.sum(w**2) / w.sum())))


def _outside(z: float, levels: Sequence[float]) -> str | None:
    beyond = [level for level in levels if z > _z(level)]
    return f"{100 * max(beyond):g} %" if beyond else None


def drawable_funnels(subgroups: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The funnels worth drawing among an evaluation's groupings (``metrics["subgroups"]``):
    those with two or more reported groups and events expected."""
    return {
        name: res["funnel"]
        for name, res in (subgroups or {}).items()
        if isinstance(res, dict)
        and res.get("funnel")
        and res["funnel"].get("kappa")
        and len(res["funnel"]["groups"]) >= 2
    }
