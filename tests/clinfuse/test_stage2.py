"""Stage 2 from the sites' sums (clinfuse.federated.stage2) against pooled reference fits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit

from clinfuse.federated.stage2 import (
    SiteLogits,
    fit_from_sites,
    site_summary,
    site_sums,
)
from clinfuse.fusion.late import COMBINER_L2

CUTS = [(0, 45), (45, 230), (230, 320)]
MODALITIES = ["image", "note", "signal"]


def _cohort(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """320 validation cases: a strong modality, a weak one, one that points the wrong way
    (its non-negative weight sits on its bound at 0)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(320) < 0.35).astype(float)
    z = rng.normal(size=(320, 3)) + np.array([1.6, 0.5, -0.6]) * (2 * y[:, None] - 1)
    present = rng.random((320, 3)) < np.array([0.6, 0.9, 0.75])
    return z, present, y


def _fit(
    z: np.ndarray,
    present: np.ndarray,
    y: np.ndarray,
    cuts: list[tuple[int, int]],
    method: str,
    *,
    combiner: bool = True,
    logit: np.ndarray | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    fused = np.zeros(len(y)) if logit is None else logit
    sites = [SiteLogits(z[a:b], present[a:b], y[a:b], fused[a:b]) for a, b in cuts]
    replies: list[dict[str, Any]] = []

    def ask(request: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = [site_sums(s, request) for s in sites]
        replies.extend(out)
        return out

    fit = fit_from_sites(
        [site_summary(s) for s in sites],
        ask,
        modalities=MODALITIES,
        method=method,
        combiner=combiner,
    )
    return fit, replies


def _combiner_reference(z: np.ndarray, present: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The penalized MLE on the pooled cases by scipy (analytic gradient, tight tolerances)."""
    center = np.where(present, z, 0).sum(0) / present.sum(0)
    x = np.where(present, z - center, 0.0)
    n = len(y)

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        u = beta[0] + x @ beta[1:]
        p = expit(u)
        loss = np.sum(np.logaddexp(0, u) - y * u) / n + COMBINER_L2 * np.sum(beta[1:] ** 2)
        grad = np.r_[np.sum(p - y), x.T @ (p - y)] / n + np.r_[0.0, 2 * COMBINER_L2 * beta[1:]]
        return float(loss), grad

    res = minimize(
        objective,
        np.r_[0.0, np.ones(3)],
        jac=True,
        method="L-BFGS-B",
        bounds=[(None, None)] + [(0, None)] * 3,
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    return np.asarray(res.x)


def test_combiner_from_site_sums_is_the_pooled_penalized_fit() -> None:
    import torch

    from clinfuse.fusion.base import FusionConfig
    from clinfuse.fusion.late import LateFusion

    z, present, y = _cohort()
    fit, replies = _fit(z, present, y, CUTS, "none")
    assert fit.combiner is not None
    got = np.r_[fit.combiner["bias"], fit.combiner["weights"]]
    ref = _combiner_reference(z, present, y)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert fit.combiner["weights"][2] == 0.0 and ref[3] < 1e-8  # held on its bound
    np.testing.assert_allclose(
        fit.combiner["center"], np.where(present, z, 0).sum(0) / present.sum(0), rtol=1e-12
    )
    # the centralized trainer's L-BFGS fit (float32 parameters) finds the same combiner
    dims = dict.fromkeys(MODALITIES, 4)
    head = LateFusion(FusionConfig(), MODALITIES, dims).fit_combiner(
        torch.tensor(z), torch.tensor(present), torch.tensor(y)
    )
    np.testing.assert_allclose(head.weights.detach().numpy(), got[1:], atol=1e-4)
    assert float(head.bias.detach()) == pytest.approx(got[0], abs=1e-4)
    # no per-case value in any reply: a loss, a gradient and a Hessian per problem
    assert fit.requests <= 10, fit.iterations
    for reply in replies:
        assert {k.split(":")[0] for k in reply} == {"loss", "grad", "hess"}
        assert max(np.asarray(v).size for v in reply.values()) <= 16


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibrators_from_site_sums_are_the_pooled_fits(method: str) -> None:
    import statsmodels.api as sm

    from clinfuse.calibration import Platt, Temperature

    z, present, y = _cohort(1)
    fit, _ = _fit(z, present, y, CUTS, method)
    assert fit.requests <= 20, fit.iterations
    assert fit.combiner is not None
    fused = fit.combiner["bias"] + np.where(present, z - fit.combiner["center"], 0) @ np.asarray(
        fit.combiner["weights"]
    )
    columns = {"fusion": (fused, y)}
    columns |= {m: (z[present[:, i], i], y[present[:, i]]) for i, m in enumerate(MODALITIES)}
    for name, (logit, target) in columns.items():
        cal = fit.calibrators[name]
        assert cal.method == method
        if method == "platt":
            ref = sm.Logit(target, np.column_stack([logit, np.ones(len(logit))])).fit(disp=0)
            got = [cal.slope_, cal.intercept_]  # type: ignore[attr-defined]
            np.testing.assert_allclose(got, ref.params, atol=1e-7)
            old = Platt().fit(logit, target)
            np.testing.assert_allclose(got, [old.slope_, old.intercept_], atol=1e-4)
        else:

            def nll(s: float, logit: np.ndarray = logit, target: np.ndarray = target) -> float:
                u = s * logit
                return float(np.sum(np.logaddexp(0, u) - target * u))

            ref_s = minimize_scalar(
                nll, bounds=(np.exp(-5), np.exp(5)), method="bounded", options={"xatol": 1e-12}
            ).x
            t = cal.temperature_  # type: ignore[attr-defined]
            assert 1 / t == pytest.approx(ref_s, abs=1e-7)
            assert t == pytest.approx(Temperature().fit(logit, target).temperature_, rel=1e-4)


def test_the_split_into_sites_does_not_change_the_fit() -> None:
    z, present, y = _cohort(2)
    one, _ = _fit(z, present, y, [(0, 320)], "platt")
    many, _ = _fit(z, present, y, [*CUTS, (320, 320)], "platt")  # an empty site too
    np.testing.assert_allclose(many.combiner["weights"], one.combiner["weights"], atol=1e-10)
    for name, cal in one.calibrators.items():
        assert many.calibrators[name].to_dict() == pytest.approx(cal.to_dict(), abs=1e-9)


def test_without_a_combiner_the_networks_fused_logit_is_calibrated() -> None:
    import statsmodels.api as sm

    z, present, y = _cohort(3)
    logit = z[:, 0] * 0.7 + 0.2
    fit, _ = _fit(z, present, y, CUTS, "platt", combiner=False, logit=logit)
    assert fit.combiner is None
    ref = sm.Logit(y, np.column_stack([logit, np.ones(len(y))])).fit(disp=0).params
    cal = fit.calibrators["fusion"]
    np.testing.assert_allclose([cal.slope_, cal.intercept_], ref, atol=1e-7)  # type: ignore[attr-defined]


def test_a_modality_without_both_outcomes_is_left_uncalibrated_and_bad_settings_fail() -> None:
    from clinfuse.errors import ConfigError

    z, present, y = _cohort(4)
    present[:, 1] = present[:, 1] & (y == 1)  # the note only among events
    fit, _ = _fit(z, present, y, CUTS, "temperature")
    assert fit.calibrators["note"].method == "none"
    assert fit.calibrators["image"].method == "temperature"
    with pytest.raises(ConfigError, match="isotonic calibration needs every validation logit"):
        _fit(z, present, y, CUTS, "isotonic")
    with pytest.raises(ConfigError, match="both outcomes"):
        _fit(z, present, np.zeros_like(y), CUTS, "platt")
    none, _ = _fit(z, present, np.zeros_like(y), CUTS, "none")  # nothing to calibrate
    assert {c.method for c in none.calibrators.values()} == {"none"}


def test_the_fit_round_trips_through_json() -> None:
    from clinfuse.federated.stage2 import Stage2Fit

    z, present, y = _cohort(5)
    fit, _ = _fit(z, present, y, CUTS, "platt")
    back = Stage2Fit.from_dict(fit.to_dict())
    assert back.to_dict() == fit.to_dict()
    grid = np.linspace(-3, 3, 13)
    for name, cal in fit.calibrators.items():
        np.testing.assert_array_equal(
            back.calibrators[name].predict_proba(grid), cal.predict_proba(grid)
        )


def test_separated_outcomes_end_the_fit_instead_of_running_off() -> None:
    """A modality whose logits separate the outcomes has no finite Platt MLE: the fit stops
    once every fitted risk is within about 1e-6 of its outcome (32 requests here)."""
    rng = np.random.default_rng(6)
    y = np.r_[np.zeros(30), np.ones(30)]
    z = np.c_[np.r_[rng.normal(-2, 0.5, 30), rng.normal(2, 0.5, 30)], rng.normal(size=(60, 2))]
    present = np.ones((60, 3), bool)
    fit, _ = _fit(z, present, y, [(0, 30), (30, 60)], "platt")
    assert fit.requests <= 40
    risk = fit.calibrators["image"].predict_proba(z[:, 0])
    assert np.max(np.abs(risk - y)) < 1e-5


def test_a_constant_logit_is_calibrated_to_the_event_rate() -> None:
    """Platt scaling of a modality whose logit never varies: slope and intercept are one
    direction (a singular Hessian); the minimum-norm Newton step still ends at risks equal
    to the event rate, with finite parameters."""
    rng = np.random.default_rng(9)
    y = (rng.random(100) < 0.3).astype(float)
    z = np.c_[np.full(100, 0.7), rng.normal(size=(100, 2))]
    fit, _ = _fit(z, np.ones((100, 3), bool), y, [(0, 50), (50, 100)], "platt")
    cal = fit.calibrators["image"]
    assert np.isfinite([cal.slope_, cal.intercept_]).all()  # type: ignore[attr-defined]
    assert cal.predict_proba(np.array([0.7]))[0] == pytest.approx(y.mean(), abs=1e-9)
