"""Dynamic logistic recalibration: an update that follows a drifting site, case date by
case date.

A one-off recalibration (:mod:`clinfuse.evaluation.recalibrate`) fits ``logit p' = a + b ·
logit p`` on a window of cases and keeps it; when the site keeps drifting, the update ages.
Here ``(a, b)`` is a state that evolves: a Bayesian logistic regression whose information
decays with a half-life, updated with each day's outcomes (dynamic logistic regression with
a forgetting factor; McCormick et al., Biometrics 2012;68:23–30; for clinical prediction
models, Jenkins et al., Diagn Progn Res 2018;2:23).

Before the first day the state is the model as it is, ``(a, b) = (0, 1)``, with prior
standard deviation ``prior_sd`` on each. Between two days ``Δ`` days apart the information
(the inverse covariance) ``J`` decays towards the prior's ``J₀`` with the factor
``λ = 2^(−Δ / half_life)``: ``J ← λ J + (1 − λ) J₀``. What was learned ``half_life`` days
ago counts half, and a long gap without cases leaves the state as uncertain as the prior,
never more (stabilized forgetting; Kulhavý & Zarrop, Int J Control 1993;58:905–24). A day's
cases, whose outcomes arrive together, then update the state by one Newton step of the
posterior (the Laplace approximation):

    P ← (P⁻¹ + Σ pᵢ(1 − pᵢ) xᵢxᵢᵀ)⁻¹,   θ ← θ + P Σ (yᵢ − pᵢ) xᵢ,   xᵢ = (1, zᵢ),

with ``pᵢ = σ(θ · xᵢ)`` at the state before the day. That ``pᵢ`` is the case's
*prequential* risk: what the dynamically updated model said before the outcome was known.
Scored against the outcomes, the prequential risks measure honestly whether the updating
helps; the final state is the update to use for the next cases. Without forgetting
(``half_life_days=None``) and with a vague prior, the final state approaches the maximum
likelihood fit on all cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import expit

from clinfuse.evaluation.metrics import log_loss

__all__ = [
    "HALF_LIVES",
    "DynamicRecalibration",
    "choose_half_life",
    "dynamic_recalibration",
]

HALF_LIVES: tuple[float | None, ...] = (30.0, 90.0, 180.0, 365.0, 730.0, None)
"""The half-lives (days; None: nothing forgotten) :func:`choose_half_life` compares."""


@dataclass
class DynamicRecalibration:
    """The replay of a dynamic recalibration.

    Attributes:
        days: (T,) the distinct dates, in order (``datetime64[D]``).
        states: (T, 2) ``(a, b)`` after each day's update.
        covariances: (T, 2, 2) their posterior covariances.
        n_cases, n_events: (T,) each day's cases and events.
        prequential: (N,) each case's risk from the state before its day, in input order.
        half_life_days, prior_sd: the settings.
    """

    days: np.ndarray
    states: np.ndarray
    covariances: np.ndarray
    n_cases: np.ndarray
    n_events: np.ndarray
    prequential: np.ndarray
    half_life_days: float | None
    prior_sd: float

    @property
    def intercept(self) -> float:
        return float(self.states[-1, 0])

    @property
    def slope(self) -> float:
        return float(self.states[-1, 1])

    @property
    def covariance(self) -> np.ndarray:
        return self.covariances[-1]

    def table(self) -> pd.DataFrame:
        """One row per day: date, cases, events, the state after it and its SEs."""
        se = np.sqrt(np.diagonal(self.covariances, axis1=1, axis2=2))
        return pd.DataFrame(
            {
                "date": pd.to_datetime(self.days).strftime("%Y-%m-%d"),
                "n_cases": self.n_cases,
                "n_events": self.n_events,
                "intercept": self.states[:, 0],
                "intercept_se": se[:, 0],
                "slope": self.states[:, 1],
                "slope_se": se[:, 1],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        se = np.sqrt(np.diag(self.covariance))
        return {
            "half_life_days": self.half_life_days,
            "prior_sd": self.prior_sd,
            "first_day": str(self.days[0]),
            "last_day": str(self.days[-1]),
            "n_days": len(self.days),
            "intercept": self.intercept,
            "intercept_se": float(se[0]),
            "slope": self.slope,
            "slope_se": float(se[1]),
            "correlation": float(self.covariance[0, 1] / (se[0] * se[1])),
        }


def dynamic_recalibration(
    z: ArrayLike,
    y: ArrayLike,
    dates: ArrayLike,
    *,
    half_life_days: float | None = 365.0,
    prior_sd: float = 1.0,
) -> DynamicRecalibration:
    """Replay a dynamic logistic recalibration of the logits ``z`` in date order.

    Args:
        z: (N,) the logits of the risks to update.
        y: (N,) 0/1 outcomes.
        dates: (N,) the cases' dates (anything ``numpy.datetime64`` reads; no NaT).
        half_life_days: days after which an outcome's information counts half (None: never
            forgotten).
        prior_sd: prior standard deviation of ``a`` around 0 and of ``b`` around 1.

    Returns:
        :class:`DynamicRecalibration`.

    Raises:
        ValueError: mismatched lengths, no case, an undated case, outcomes other than 0/1,
            or a setting out of range.
    """
    z_ = np.asarray(z, dtype=float)
    y_ = np.asarray(y, dtype=float)
    d_ = np.asarray(dates, dtype="datetime64[D]")
    if not len(z_) == len(y_) == len(d_) or len(z_) == 0:
        raise ValueError(
            f"z, y and dates need one equal, positive length: {len(z_)}, {len(y_)}, {len(d_)}"
        )
    if np.isnat(d_).any():
        raise ValueError(f"{int(np.isnat(d_).sum())} case(s) have no date")
    if not np.isin(y_, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1")
    if not np.isfinite(z_).all():
        raise ValueError("logits must be finite")
    if half_life_days is not None and not half_life_days > 0:
        raise ValueError(f"half_life_days is {half_life_days}; use a positive number of days")
    if not prior_sd > 0:
        raise ValueError(f"prior_sd is {prior_sd}; use a positive number")

    order = np.argsort(d_, kind="stable")
    days, starts, counts = np.unique(d_[order], return_index=True, return_counts=True)
    theta = np.array([0.0, 1.0])
    prior_information = np.eye(2) / prior_sd**2
    cov = np.eye(2) * prior_sd**2
    states = np.empty((len(days), 2))
    covariances = np.empty((len(days), 2, 2))
    prequential = np.empty(len(z_))
    n_events = np.empty(len(days), dtype=int)
    previous = None
    for t, (day, start, count) in enumerate(zip(days, starts, counts, strict=True)):
        information = np.linalg.inv(cov)
        if previous is not None and half_life_days is not None:
            keep = 2.0 ** (-(day - previous).astype(float) / half_life_days)
            information = keep * information + (1.0 - keep) * prior_information
        idx = order[start : start + count]
        x = np.column_stack([np.ones(count), z_[idx]])
        p = expit(x @ theta)
        prequential[idx] = p
        cov = np.linalg.inv(information + (x * (p * (1.0 - p))[:, None]).T @ x)
        cov = (cov + cov.T) / 2.0
        theta = theta + cov @ (x.T @ (y_[idx] - p))
        states[t], covariances[t] = theta, cov
        n_events[t] = int(y_[idx].sum())
        previous = day
    return DynamicRecalibration(
        days=days,
        states=states,
        covariances=covariances,
        n_cases=counts.astype(int),
        n_events=n_events,
        prequential=prequential,
        half_life_days=half_life_days,
        prior_sd=prior_sd,
    )


def choose_half_life(
    z: ArrayLike,
    y: ArrayLike,
    dates: ArrayLike,
    *,
    candidates: tuple[float | None, ...] = HALF_LIVES,
    prior_sd: float = 1.0,
) -> tuple[DynamicRecalibration, list[dict[str, Any]]]:
    """The replay whose prequential risks have the lowest log loss among ``candidates``
    half-lives (prequential model choice; Dawid, JRSS A 1984;147:278–92).

    Its prequential log loss is then a little optimistic: it won a comparison on these
    very outcomes.

    Returns:
        ``(replay, table)``: the chosen replay, and per candidate ``{"half_life_days",
        "log_loss"}``.
    """
    y_ = np.asarray(y, dtype=float)
    best: DynamicRecalibration | None = None
    table = []
    for half_life in candidates:
        replay = dynamic_recalibration(z, y_, dates, half_life_days=half_life, prior_sd=prior_sd)
        loss = log_loss(y_, replay.prequential)
        table.append({"half_life_days": half_life, "log_loss": loss})
        if best is None or loss < log_loss(y_, best.prequential):
            best = replay
    assert best is not None
    return best, table
