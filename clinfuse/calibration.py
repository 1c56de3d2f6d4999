"""Post-hoc calibration of the fused logit, fitted on the validation split.

Three calibrators with one interface (``fit(logits, y)``, ``predict_proba(logits)``,
``to_dict``/``from_dict`` so the run folder stores them as JSON, no pickle):

- ``temperature``: p = σ(z / T) — one parameter, keeps the ranking and the 0.5 point;
- ``platt``: p = σ(a·z + b) — also corrects a shifted intercept (e.g. from class weights);
- ``isotonic``: a monotone step function (scikit-learn ``IsotonicRegression``); needs more
  validation cases, may tie risks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from clinfuse.errors import ConfigError

__all__ = ["CALIBRATORS", "Calibrator", "build_calibrator", "calibrator_from_dict"]


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
    """p = σ(a·z + b), unpenalised logistic regression on the logit."""

    method = "platt"

    def fit(self, logits: np.ndarray, y: np.ndarray) -> Platt:
        z, t = self._check(logits, y)
        res = minimize(
            lambda ab: _nll(expit(ab[0] * z + ab[1]), t), x0=[1.0, 0.0], method="L-BFGS-B"
        )
        self.slope_, self.intercept_ = float(res.x[0]), float(res.x[1])
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return expit(self.slope_ * np.asarray(logits, dtype=float) + self.intercept_)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "slope": self.slope_, "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Platt:
        obj = cls()
        obj.slope_, obj.intercept_ = float(state["slope"]), float(state["intercept"])
        return obj


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


CALIBRATORS: dict[str, type[Calibrator]] = {
    c.method: c for c in (Identity, Temperature, Platt, Isotonic)
}


def build_calibrator(method: str) -> Calibrator:
    try:
        return CALIBRATORS[method]()
    except KeyError:
        raise ConfigError(
            f"unknown calibration method {method!r}; available: {sorted(CALIBRATORS)}",
            field="calibration.method",
        ) from None


def calibrator_from_dict(state: dict[str, Any]) -> Calibrator:
    return CALIBRATORS[state["method"]].from_dict(state)
