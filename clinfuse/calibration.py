"""Post-hoc calibration of the fused logit, fitted on the validation split.

Three calibrators with one interface (``fit(logits, y)``, ``predict_proba(logits)``,
``to_dict``/``from_dict`` so the run folder stores them as JSON, no pickle):

- ``temperature``: p = σ(z / T) — one parameter, keeps the ranking and the 0.5 point;
- ``platt``: p = σ(a·z + b) — also corrects a shifted intercept (e.g. from class weights);
- ``isotonic``: a monotone step function (scikit-learn ``IsotonicRegression``); needs more
  validation cases, may tie risks.

A federated run can fit temperature and Platt scaling from the sites' sums instead
(:mod:`clinfuse.federated.stage2`); isotonic regression needs every logit in one place.

Model updating at a new site (``clinfuse recalibrate``) puts a second map on top of the
fitted one without touching it: :class:`Updated` holds the run's calibrator (``base``) and an
``update`` applied to the logit of its risk — :class:`Intercept` (recalibration in the large,
p = σ(z + a)), ``platt`` (logistic recalibration) or ``isotonic``. Updates nest, so a model
recalibrated twice keeps its whole history in the run folder.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from clinfuse.errors import ConfigError

__all__ = [
    "CALIBRATORS",
    "UPDATE_METHODS",
    "Calibrator",
    "Dynamic",
    "Intercept",
    "Updated",
    "build_calibrator",
    "calibrator_from_dict",
    "fit_logistic",
    "fit_update",
]


def fit_logistic(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None, *, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray] | None:
    """Maximum-likelihood logistic regression by Newton–Raphson (no penalty).

    Args:
        x: (N, K) design matrix (include a column of ones for an intercept).
        y: (N,) 0/1 outcomes.
        offset: (N,) fixed term added to the linear predictor.

    Returns:
        ``(coef (K,), covariance (K, K))`` or ``None`` when the fit does not
        converge (one class only, or complete separation).
    """
    y = np.asarray(y, dtype=float)
    off = np.zeros(len(y)) if offset is None else np.asarray(offset, dtype=float)
    beta = np.zeros(x.shape[1])
    if len(np.unique(y)) < 2:
        return None

    def loglik(b: np.ndarray) -> float:
        eta = x @ b + off
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    current = loglik(beta)
    for _ in range(max_iter):
        mu = expit(x @ beta + off)
        w = mu * (1 - mu)
        info = x.T @ (x * w[:, None])
        grad = x.T @ (y - mu)
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            return None
        t = 1.0
        while t > 1e-8:  # step halving keeps the likelihood increasing
            new = loglik(beta + t * step)
            if new >= current - 1e-12:
                break
            t /= 2
        beta = beta + t * step
        converged = abs(new - current) < 1e-10 and np.max(np.abs(t * step)) < 1e-8
        current = new
        if converged:
            break
    if np.any(np.abs(beta) > 50):  # separation: the MLE runs off to infinity
        return None
    mu = expit(x @ beta + off)
    info = x.T @ (x * (mu * (1 - mu))[:, None])
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None
    return beta, cov


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


class Calibrator:
    method: ClassVar[str]

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Calibrator:
        raise NotImplementedError

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Calibrator:
        raise NotImplementedError

    @staticmethod
    def _check(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(logits, dtype=float).ravel()
        t = np.asarray(y, dtype=float).ravel()
        if z.shape != t.shape:
            raise ValueError(f"logits {z.shape} and labels {t.shape} differ in length")
        if len(np.unique(t)) < 2:
            raise ConfigError(
                "calibration needs both outcomes among the validation cases",
                field="calibration",
                hint="use a larger validation split or set calibration.method to 'none'",
            )
        return z, t


class Identity(Calibrator):
    method = "none"

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Identity:
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return expit(np.asarray(logits, dtype=float))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Identity:
        return cls()


class Temperature(Calibrator):
    """p = σ(z / T), T > 0 minimising the validation log loss."""

    method = "temperature"

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Temperature:
        z, t = self._check(logits, y)
        res = minimize(
            lambda lt: _nll(expit(z / np.exp(lt[0])), t),
            x0=[0.0],
            method="L-BFGS-B",
            bounds=[(-5.0, 5.0)],
        )
        self.temperature_ = float(np.exp(res.x[0]))
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return expit(np.asarray(logits, dtype=float) / self.temperature_)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": self.temperature_}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Temperature:
        obj = cls()
        obj.temperature_ = float(state["temperature"])
        return obj


class Platt(Calibrator):
    """p = σ(a·z + b), unpenalised logistic regression on the logit.

    When the outcomes are separated by the logit (every event's above every non-event's, or
    below: common on a small validation split) the maximum-likelihood slope is infinite and
    the fit runs away (slopes in the hundreds, risks of 1e-66). Then Platt's (1999) targets
    are used instead of 0/1: ``(N₊ + 1)/(N₊ + 2)`` for events and ``1/(N₋ + 2)`` for
    non-events, which keeps the fit finite; ``separated_`` records it.
    """

    method = "platt"
    separated_: bool = False

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Platt:
        z, t = self._check(logits, y)
        events, others = z[t == 1], z[t == 0]
        self.separated_ = bool(events.min() >= others.max() or events.max() <= others.min())
        if self.separated_:
            n_pos, n_neg = len(events), len(others)
            t = np.where(t == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        res = minimize(
            lambda ab: _nll(expit(ab[0] * z + ab[1]), t), x0=[1.0, 0.0], method="L-BFGS-B"
        )
        self.slope_, self.intercept_ = float(res.x[0]), float(res.x[1])
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return expit(self.slope_ * np.asarray(logits, dtype=float) + self.intercept_)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "slope": self.slope_,
            "intercept": self.intercept_,
        }
        if self.separated_:
            out["separated"] = True  # fitted on Platt's targets (see the class)
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Platt:
        obj = cls()
        obj.slope_, obj.intercept_ = float(state["slope"]), float(state["intercept"])
        obj.separated_ = bool(state.get("separated", False))
        return obj


class Dynamic(Calibrator):
    """The final state of a dynamic logistic recalibration (:mod:`clinfuse.evaluation.dynamic`):
    ``p = σ(a + b·z)``, with the state's posterior covariance (the review app draws its band
    from it) and the replay's last day and half-life. Assembled, not fitted."""

    method = "dynamic"

    def __init__(
        self,
        intercept: float = 0.0,
        slope: float = 1.0,
        covariance: Any = None,
        *,
        last_day: str | None = None,
        half_life_days: float | None = None,
    ) -> None:
        self.intercept_, self.slope_ = float(intercept), float(slope)
        self.covariance_ = np.zeros((2, 2)) if covariance is None else np.asarray(covariance, float)
        self.last_day, self.half_life_days = last_day, half_life_days

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Dynamic:
        raise TypeError(
            "a dynamic update is the end of a replay (dynamic_recalibration), not fitted"
        )

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return expit(self.slope_ * np.asarray(logits, dtype=float) + self.intercept_)

    def draws(self, logits: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
        """(n, N) risks under ``n`` draws of ``(a, b)`` from the state's normal posterior."""
        rng = np.random.default_rng(seed)
        ab = rng.multivariate_normal([self.intercept_, self.slope_], self.covariance_, size=n)
        return expit(ab[:, :1] + ab[:, 1:] * np.asarray(logits, dtype=float)[None, :])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "intercept": self.intercept_,
            "slope": self.slope_,
            "covariance": self.covariance_.tolist(),
            "last_day": self.last_day,
            "half_life_days": self.half_life_days,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Dynamic:
        return cls(
            state["intercept"],
            state["slope"],
            state["covariance"],
            last_day=state.get("last_day"),
            half_life_days=state.get("half_life_days"),
        )


class Isotonic(Calibrator):
    """Monotone step function of the logit (scikit-learn IsotonicRegression)."""

    method = "isotonic"

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Isotonic:
        from sklearn.isotonic import IsotonicRegression

        z, t = self._check(logits, y)
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(z, t)
        self.x_ = np.asarray(iso.X_thresholds_, dtype=float)
        self.y_ = np.asarray(iso.y_thresholds_, dtype=float)
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(logits, dtype=float), self.x_, self.y_)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": self.x_.tolist(), "y": self.y_.tolist()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Isotonic:
        obj = cls()
        obj.x_ = np.asarray(state["x"], dtype=float)
        obj.y_ = np.asarray(state["y"], dtype=float)
        return obj


class Intercept(Calibrator):
    """p = σ(z + a): the intercept alone, by maximum likelihood with z as an offset.

    The fitted model predicts as many events as the fitting cases had (Σ p = Σ y).
    """

    method = "intercept"

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Intercept:
        z, t = self._check(logits, y)
        fit = fit_logistic(np.ones((len(z), 1)), t, offset=z)
        if fit is None:
            raise ConfigError(
                "the intercept cannot be estimated: the risks separate the outcomes perfectly",
                field="calibration",
            )
        self.intercept_ = float(fit[0][0])
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return expit(np.asarray(logits, dtype=float) + self.intercept_)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Intercept:
        obj = cls()
        obj.intercept_ = float(state["intercept"])
        return obj


UPDATE_EPS = 1e-6
"""Risks are clipped to [ε, 1 − ε] before the update takes their logit (isotonic gives 0 and 1)."""


class Updated(Calibrator):
    """A fitted calibrator followed by an update on the logit of its risk.

    ``p = update(logit(clip(base(z))))``. It is built from fitted parts, not fitted
    itself (see :mod:`clinfuse.evaluation.recalibrate`).
    """

    method = "updated"

    def __init__(self, base: Calibrator, update: Calibrator) -> None:
        self.base = base
        self.update = update

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Updated:
        raise TypeError("an Updated calibrator is assembled from fitted parts, not fitted")

    def base_logit(self, logits: np.ndarray) -> np.ndarray:
        """The logit of the base calibrator's risk: what the update sees."""
        q = np.clip(self.base.predict_proba(logits), UPDATE_EPS, 1 - UPDATE_EPS)
        return np.log(q) - np.log1p(-q)

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return self.update.predict_proba(self.base_logit(logits))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "base": self.base.to_dict(), "update": self.update.to_dict()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Updated:
        return cls(calibrator_from_dict(state["base"]), calibrator_from_dict(state["update"]))


CALIBRATORS: dict[str, type[Calibrator]] = {
    c.method: c for c in (Identity, Temperature, Platt, Isotonic)
}
"""The calibrators training fits on the validation split (``calibration.method``)."""

_STORED: dict[str, type[Calibrator]] = {
    **CALIBRATORS,
    "intercept": Intercept,
    "updated": Updated,
    "dynamic": Dynamic,
}


def build_calibrator(method: str) -> Calibrator:
    """An unfitted calibrator: one of :data:`CALIBRATORS`, or ``intercept`` (an update)."""
    try:
        return {**CALIBRATORS, "intercept": Intercept}[method]()
    except KeyError:
        raise ConfigError(
            f"unknown calibration method {method!r}; available: {sorted(CALIBRATORS)}",
            field="calibration.method",
        ) from None


UPDATE_METHODS: tuple[str, ...] = ("intercept", "logistic", "isotonic")
"""Updates ``clinfuse recalibrate`` fits on the logit of the run's risk."""


def fit_update(method: str, z: np.ndarray, y: np.ndarray) -> Calibrator:
    """Fit an update of the risk's logit ``z`` to outcomes ``y`` by maximum likelihood.

    ``intercept``: σ(z + a); ``logistic``: σ(a + b·z) (stored as ``platt``, fitted by
    Newton–Raphson: the exact maximum); ``isotonic``: a monotone step function.

    Raises:
        ConfigError: an unknown method, one outcome class only, or risks that
            separate the outcomes perfectly (no finite maximum).
    """
    if method == "logistic":
        zz, t = Calibrator._check(z, y)
        fit = fit_logistic(np.column_stack([np.ones(len(zz)), zz]), t)
        if fit is None:
            raise ConfigError(
                "the logistic update cannot be estimated: the risks separate the outcomes "
                "perfectly",
                field="calibration",
                hint="use --method intercept",
            )
        return Platt.from_dict({"intercept": float(fit[0][0]), "slope": float(fit[0][1])})
    if method in ("intercept", "isotonic"):
        return build_calibrator(method).fit(z, y)
    raise ConfigError(
        f"unknown recalibration method {method!r}; use one of {', '.join(UPDATE_METHODS)}",
        field="method",
    )


def calibrator_from_dict(state: dict[str, Any]) -> Calibrator:
    """Rebuild a calibrator from its ``to_dict`` form (as stored in ``model/model.json``)."""
    method = state.get("method")
    if method not in _STORED:
        raise ConfigError(
            f"unknown calibrator {method!r} in the run's model.json; known: {sorted(_STORED)}",
            field="calibrators",
            hint="the run was written by a newer clinfuse; upgrade clinfuse",
        )
    return _STORED[method].from_dict(state)
