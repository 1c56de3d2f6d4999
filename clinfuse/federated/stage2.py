"""Stage 2 of a federated run from the sites' sums: the combiner and the calibration.

After the federated rounds every site holds its validation cases' unimodal logits (and the
network's fused logit). The late-fusion combiner and the calibrators are all logistic
regressions on a design computed from those logits:

* combiner: ``u = b + Σ_m w_m · x_m``, ``x_m = (z_m − c_m)`` where modality m is present (0
  where missing), ``w ≥ 0``, ridge ``n·l2·Σ w²`` (the centres ``c`` are the pooled means of
  the present logits); the same fit as :meth:`~clinfuse.fusion.late.LateFusion.fit_combiner`;
* Platt scaling: ``u = a·z + b``; temperature scaling: ``u = s·z`` with ``s = 1/T`` in
  ``[e⁻⁵, e⁵]``; the same fits as :class:`~clinfuse.calibration.Platt` and
  :class:`~clinfuse.calibration.Temperature`.

The log loss ``Σ log(1 + eᵘ) − y·u``, its gradient ``Xᵀ(p − y)`` and its Hessian
``Xᵀ diag(p(1 − p)) X`` are sums over cases, so the coordinator needs from each site only
these sums at the parameters it tries (1 + K + K² numbers for K parameters) and takes
(projected, step-halving) Newton steps on their totals. The problems that do not depend on
each other are solved in lockstep, so one request to the sites serves all of them:

1. :func:`site_summary` (one message): each site's case and event counts and, per modality,
   the sum and count of its present logits and its events among them;
2. :func:`fit_from_sites` asks for :func:`site_sums` until the combiner and the modalities'
   calibrators have converged (5 requests on the demo cohort), then until the fused logit's
   calibrator has (4 more).

No per-case value leaves a site. The sums are aggregates but not differentially private: a
site with very few validation cases reveals more through them.

The same code serves the in-process simulator (``ask`` calls :func:`site_sums` on each
site's arrays) and the Flower federation (``ask`` sends one Flower message per site;
:mod:`clinfuse.federated.flower_task`). Only NumPy is imported here, so a site's
ClientApp answers a request without loading PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from clinfuse.calibration import Calibrator, build_calibrator
from clinfuse.errors import ConfigError

__all__ = [
    "SiteLogits",
    "Stage2Fit",
    "fit_from_sites",
    "fit_pooled",
    "site_summary",
    "site_sums",
]

COMBINER = "combiner"
FUSION = "calibration:fusion"
_TEMPERATURE_BOUNDS = (math.exp(-5.0), math.exp(5.0))  # s = 1/T, as Temperature.fit bounds log T

Ask = Callable[[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]
"""``ask(request) -> one reply per site``: :func:`site_sums` at every site."""


@dataclass
class SiteLogits:
    """One site's validation cases after the federated rounds (they stay at the site).

    Attributes:
        unimodal: (N, M) unimodal logits.
        present: (N, M) presence mask.
        label: (N,) 0/1 outcomes.
        logit: (N,) the network's fused logit (used when the fusion has no combiner).
    """

    unimodal: np.ndarray
    present: np.ndarray
    label: np.ndarray
    logit: np.ndarray

    def __post_init__(self) -> None:
        self.unimodal = np.asarray(self.unimodal, dtype=np.float64)
        if self.unimodal.ndim == 1:  # one modality
            self.unimodal = self.unimodal[:, None]
        self.present = np.asarray(self.present, dtype=bool).reshape(self.unimodal.shape)
        self.label = np.asarray(self.label, dtype=np.float64).ravel()
        self.logit = np.asarray(self.logit, dtype=np.float64).ravel()

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> SiteLogits:
        """From :meth:`to_arrays`'s form (a site's stored state)."""
        return cls(arrays["unimodal"], arrays["present"], arrays["label"], arrays["logit"])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (what a Flower site keeps in its node state between messages)."""
        return {
            "unimodal": self.unimodal,
            "present": self.present,
            "label": self.label,
            "logit": self.logit,
        }


_METHODS = ("platt", "temperature")


def _scalar(value: Any) -> float:
    """A one-number array (a message carries scalars as arrays of one element)."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 1:
        raise ValueError(f"expected one number, got an array of shape {np.shape(value)}")
    return float(arr[0])


def site_summary(site: SiteLogits) -> dict[str, np.ndarray]:
    """The first message: counts and, per modality, the sum and count of present logits."""
    present = site.present
    return {
        "n": np.asarray([float(len(site.label))]),
        "events": np.asarray([float(site.label.sum())]),
        "logit_sum": np.where(present, site.unimodal, 0.0).sum(axis=0),
        "count": present.sum(axis=0).astype(np.float64),
        "events_present": (present * site.label[:, None]).sum(axis=0),
    }


def _centred(site: SiteLogits, center: np.ndarray) -> np.ndarray:
    """Each present unimodal logit minus its modality's centre; 0 where missing."""
    return np.where(site.present, site.unimodal - center, 0.0)


def _design(site: SiteLogits, name: str, method: str, request: Mapping[str, np.ndarray]) -> Any:
    """(X, y) of problem ``name`` at this site."""
    if name == COMBINER:
        centred = _centred(site, request["center"])
        return np.column_stack([np.ones(len(centred)), centred]), site.label
    if name == FUSION:
        if "combiner" in request:
            beta = np.asarray(request["combiner"], dtype=np.float64)
            z = beta[0] + _centred(site, request["center"]) @ beta[1:]
        else:
            z = site.logit
        y = site.label
    else:
        i = int(name.rsplit(":", 1)[1])
        rows = site.present[:, i]
        z, y = site.unimodal[rows, i], site.label[rows]
    if method == "temperature":
        return z[:, None], y
    return np.column_stack([z, np.ones(len(z))]), y


def site_sums(site: SiteLogits, request: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Log loss, gradient and Hessian sums of each requested problem at this site.

    ``request`` (arrays only, as a Flower message carries them): ``method_code`` (0: Platt,
    1: temperature scaling), ``center`` (M,), ``combiner`` ([b, w...], once it is fitted)
    and ``beta:<problem>`` for each problem to evaluate (``combiner``,
    ``calibration:fusion``, ``calibration:<modality index>``). The reply has
    ``loss:<problem>``, ``grad:<problem>`` and ``hess:<problem>``.
    """
    method = _METHODS[int(_scalar(request["method_code"]))]
    out: dict[str, np.ndarray] = {}
    for key, beta in request.items():
        if not key.startswith("beta:"):
            continue
        name = key[len("beta:") :]
        x, y = _design(site, name, method, request)
        u = x @ np.asarray(beta, dtype=np.float64)
        p = expit(u)
        out["loss:" + name] = np.asarray([float(np.sum(np.logaddexp(0.0, u) - y * u))])
        out["grad:" + name] = x.T @ (p - y)
        out["hess:" + name] = x.T @ (x * (p * (1.0 - p))[:, None])
    return out


class _Newton:
    """Projected Newton with step halving on a sum the sites report (one problem).

    ``F(β) = Σ_sites loss(β) + Σ_j ridge_j β_j²`` within ``lower ≤ β ≤ upper``.
    """

    def __init__(
        self,
        x0: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        ridge: np.ndarray,
        *,
        max_iter: int = 50,
    ) -> None:
        self.lower, self.upper, self.ridge = lower, upper, ridge
        self.point = np.clip(np.asarray(x0, dtype=np.float64), lower, upper)
        self.x: np.ndarray | None = None
        self.f = math.inf
        self.g = np.zeros_like(self.point)
        self.h = np.eye(len(self.point))
        self.direction = np.zeros_like(self.point)
        self.t = 1.0
        self.iterations = 0
        self.max_iter = max_iter
        self.done = False

    def update(self, loss: float, grad: np.ndarray, hess: np.ndarray) -> None:
        """Take the sites' summed values at :attr:`point`; set the next point or finish."""
        pt = self.point
        f = loss + float(np.sum(self.ridge * pt**2))
        g = grad + 2.0 * self.ridge * pt
        h = hess + 2.0 * np.diag(self.ridge)
        if self.x is not None:
            armijo = self.f + 1e-4 * float(self.g @ (pt - self.x))
            rounding = abs(f - self.f) <= 1e-12 * max(1.0, abs(f))
            if not (f <= armijo or rounding):
                if self.t > 1e-9:
                    self.t /= 2  # the step went too far: halve it
                    self.point = np.clip(self.x + self.t * self.direction, self.lower, self.upper)
                    return
                self.done = True  # no decrease along the direction: x is the optimum
                return
        self.x, self.f, self.g, self.h = pt, f, g, h
        self.iterations += 1
        self.direction = self._direction()
        decrement = -float(g @ self.direction)  # λ²: twice the predicted decrease
        if decrement <= 1e-12 * max(1.0, abs(f)):
            # the quadratic model is exact to rounding here: take its step without asking
            self.x = np.clip(pt + self.direction, self.lower, self.upper)
            self.done = True
            return
        if self.iterations >= self.max_iter or f < 1e-6:
            # separated outcomes: the MLE runs off to infinity and the loss to 0; stop once
            # every fitted risk is within 1e-6 of its outcome
            self.done = True
            return
        self.t = 1.0
        self.point = np.clip(pt + self.direction, self.lower, self.upper)

    def _direction(self) -> np.ndarray:
        """The Newton step on the variables not held at a bound by their gradient."""
        x, g = self.x, self.g
        assert x is not None
        held = ((x <= self.lower) & (g > 0)) | ((x >= self.upper) & (g < 0))
        free = ~held
        d = np.zeros_like(x)
        if not free.any():
            return d
        hf = self.h[np.ix_(free, free)]
        gf = g[free]
        scale = max(1.0, float(np.max(np.abs(np.diag(hf)))))
        # the minimum-norm Newton step: finite where the Hessian is singular (a constant
        # logit makes Platt's slope and intercept one direction)
        step = -np.linalg.lstsq(hf, gf, rcond=1e-12)[0]
        if not np.all(np.isfinite(step)) or float(gf @ step) >= 0:
            step = -gf / scale  # not a descent direction: the scaled gradient instead
        d[free] = step
        return d


@dataclass
class Stage2Fit:
    """What stage 2 fitted from the sites' sums.

    Attributes:
        modalities: the modalities in the model's order.
        combiner: ``{"bias", "weights", "center"}`` of the late-fusion combiner (and
            ``weight_raw``, the weights before softplus, when the fit has them), or None (the
            fusion has no combiner).
        calibrators: ``fusion`` and each modality: a fitted calibrator (``none`` where a
            modality's cases lack an outcome class).
        requests: requests sent to every site after the summary (one message per site each;
            0 for a pooled fit).
        iterations: Newton iterations per problem.
    """

    modalities: list[str]
    combiner: dict[str, Any] | None
    calibrators: dict[str, Calibrator]
    requests: int
    iterations: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what a Flower coordinator writes; :meth:`from_dict` reads it)."""
        return {
            "modalities": list(self.modalities),
            "combiner": self.combiner,
            "calibrators": {k: c.to_dict() for k, c in self.calibrators.items()},
            "requests": self.requests,
            "iterations": dict(self.iterations),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stage2Fit:
        """Inverse of :meth:`to_dict`."""
        from clinfuse.calibration import calibrator_from_dict

        return cls(
            modalities=[str(m) for m in d["modalities"]],
            combiner=None if d.get("combiner") is None else dict(d["combiner"]),
            calibrators={k: calibrator_from_dict(dict(v)) for k, v in d["calibrators"].items()},
            requests=int(d.get("requests", 0)),
            iterations={k: int(v) for k, v in dict(d.get("iterations") or {}).items()},
        )


def _calibration_problem(method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if method == "temperature":
        lo, hi = _TEMPERATURE_BOUNDS
        return np.array([1.0]), np.array([lo]), np.array([hi])
    return np.array([1.0, 0.0]), np.full(2, -np.inf), np.full(2, np.inf)


def _calibrator(method: str, beta: np.ndarray) -> Calibrator:
    cal = build_calibrator(method)
    if method == "temperature":
        return cal.from_dict({"temperature": 1.0 / float(beta[0])})
    return cal.from_dict({"slope": float(beta[0]), "intercept": float(beta[1])})


def _solve(
    problems: dict[str, _Newton],
    ask: Ask,
    base: dict[str, np.ndarray],
) -> int:
    """Ask the sites until every problem has converged; returns the requests sent."""
    requests = 0
    while True:
        active = {k: p for k, p in problems.items() if not p.done}
        if not active:
            return requests
        request = dict(base)
        request.update({"beta:" + k: p.point for k, p in active.items()})
        replies = ask(request)
        requests += 1
        for k, p in active.items():
            loss = sum(_scalar(r["loss:" + k]) for r in replies)
            grad = sum(np.asarray(r["grad:" + k], dtype=np.float64) for r in replies)
            hess = sum(np.asarray(r["hess:" + k], dtype=np.float64) for r in replies)
            p.update(loss, np.asarray(grad), np.asarray(hess))


def fit_from_sites(
    summaries: Sequence[Mapping[str, np.ndarray]],
    ask: Ask,
    *,
    modalities: Sequence[str],
    method: str,
    combiner: bool,
    l2: float | None = None,
) -> Stage2Fit:
    """Fit the combiner (when ``combiner``) and the calibrators from the sites' sums.

    Args:
        summaries: each site's :func:`site_summary`.
        ask: sends a request to every site and returns their :func:`site_sums` replies.
        modalities: the model's modalities (the columns of the sites' logits).
        method: the calibration method: ``platt``, ``temperature`` or ``none``.
        combiner: fit the late-fusion combiner (else the network's fused logit is used).
        l2: the combiner's ridge penalty (default:
            :data:`clinfuse.fusion.late.COMBINER_L2`, as the centralized fit).

    Raises:
        ConfigError: ``isotonic`` calibration (it needs every logit in one place), or the
            validation cases hold one outcome class only.
    """
    if method not in ("platt", "temperature", "none"):
        raise ConfigError(
            f"{method} calibration needs every validation logit in one place; it cannot be "
            "fitted from per-site aggregates",
            field="calibration.method",
            hint="use calibration.method platt or temperature (or none), or --stage2 pooled",
        )
    if l2 is None:
        from clinfuse.fusion.late import COMBINER_L2

        l2 = COMBINER_L2
    m = len(modalities)
    n = sum(_scalar(s["n"]) for s in summaries)
    events = sum(_scalar(s["events"]) for s in summaries)
    if method != "none" and events in (0.0, n):
        raise ConfigError(
            "calibration needs both outcomes among the validation cases",
            field="calibration",
            hint="use a larger validation split or set calibration.method to 'none'",
        )
    sums = np.sum([np.asarray(s["logit_sum"], dtype=np.float64) for s in summaries], axis=0)
    counts = np.sum([np.asarray(s["count"], dtype=np.float64) for s in summaries], axis=0)
    ev_present = np.sum([np.asarray(s["events_present"], np.float64) for s in summaries], axis=0)
    center = sums / np.maximum(counts, 1.0)
    base = {
        "center": center,
        "method_code": np.asarray([_METHODS.index(method) if method != "none" else 0]),
    }
    first: dict[str, _Newton] = {}
    if combiner:
        prevalence = min(max(events / max(n, 1.0), 1e-4), 1 - 1e-4)
        first[COMBINER] = _Newton(
            np.r_[math.log(prevalence / (1 - prevalence)), np.ones(m)],
            np.r_[-np.inf, np.zeros(m)],
            np.full(m + 1, np.inf),
            np.r_[0.0, np.full(m, n * l2)],
        )
    calibrated = [
        i for i in range(m) if method != "none" and counts[i] >= 2 and 0 < ev_present[i] < counts[i]
    ]
    for i in calibrated:
        x0, lo, hi = _calibration_problem(method)
        first[f"calibration:{i}"] = _Newton(x0, lo, hi, np.zeros(len(x0)))
    requests = _solve(first, ask, base)
    fitted: dict[str, Any] | None = None
    if combiner:
        beta = first[COMBINER].x
        assert beta is not None
        fitted = {
            "bias": float(beta[0]),
            "weights": [float(w) for w in beta[1:]],
            "center": [float(c) for c in center],
        }
        base["combiner"] = beta
    second: dict[str, _Newton] = {}
    if method != "none":
        x0, lo, hi = _calibration_problem(method)
        second[FUSION] = _Newton(x0, lo, hi, np.zeros(len(x0)))
        requests += _solve(second, ask, base)
    calibrators: dict[str, Calibrator] = {
        "fusion": build_calibrator("none")
        if method == "none"
        else _calibrator(method, _point(second[FUSION]))
    }
    for i, name in enumerate(modalities):
        key = f"calibration:{i}"
        calibrators[name] = (
            _calibrator(method, _point(first[key])) if key in first else build_calibrator("none")
        )
    iterations = {k: p.iterations for k, p in {**first, **second}.items()}
    return Stage2Fit(list(modalities), fitted, calibrators, requests, iterations)


def fit_pooled(
    held: SiteLogits, *, modalities: Sequence[str], method: str, combiner: bool
) -> Stage2Fit:
    """Stage 2 on the pooled validation logits (``--stage2 pooled``): the centralized
    trainer's fits (:meth:`LateFusion.fit_combiner`, then each calibrator's ``fit``), so
    isotonic calibration works too."""
    import torch

    from clinfuse.fusion.late import fit_late_combiner

    fitted: dict[str, Any] | None = None
    fused = held.logit
    if combiner:
        theta, bias, center = fit_late_combiner(
            torch.from_numpy(held.unimodal),
            torch.from_numpy(held.present),
            torch.from_numpy(held.label),
        )
        raw = theta.float().double()  # what the model stores (float32)
        weights = torch.nn.functional.softplus(raw).numpy()
        b = float(bias.float())
        fused = b + _centred(held, center.numpy()) @ weights
        fitted = {
            "bias": b,
            "weights": [float(w) for w in weights],
            "weight_raw": [float(w) for w in raw],
            "center": [float(c) for c in center],
        }
    y = held.label
    calibrators = {"fusion": build_calibrator(method).fit(fused, y)}
    for i, name in enumerate(modalities):
        has = held.present[:, i]
        ok = has.sum() >= 2 and len(np.unique(y[has])) == 2
        calibrators[name] = build_calibrator(method if ok else "none")
        if ok:
            calibrators[name].fit(held.unimodal[has, i], y[has])
    return Stage2Fit(list(modalities), fitted, calibrators, requests=0)


def _point(problem: _Newton) -> np.ndarray:
    assert problem.x is not None
    return problem.x
