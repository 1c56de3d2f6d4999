"""Validation sample size (Riley et al. 2021) against the pmvalsampsize reference figures,
independent quadrature and Monte Carlo, and hand formulas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.special import expit
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from clinfuse.errors import ConfigError
from clinfuse.evaluation.samplesize import from_evaluation, validation_sample_size

# pmvalsampsize's own test (tests/testthat/test_bin.R, "Test 4.1"): prevalence 0.018,
# C 0.8, LP ~ N(-5, 2.5), O/E CI width 1 -> O/E 905, C-statistic 4252 (its slope figure,
# 4501, comes from 1,000 simulated LP values and is not reproducible to the case)
PAPER = {"prevalence": 0.018, "c_statistic": 0.8, "lp_normal": (-5.0, 2.5), "oe_ci_width": 1.0}


def _rows(res) -> dict[str, dict]:
    return {r["criterion"]: r for r in res.criteria}


def test_c_statistic_criterion_is_the_reference_figure() -> None:
    rows = _rows(validation_sample_size(**PAPER))
    assert rows["C-statistic"]["n"] == 4252


def test_oe_criterion_solves_the_se_exactly_and_the_package_grid_gives_905() -> None:
    phi = PAPER["prevalence"]
    row = _rows(validation_sample_size(**PAPER))["O/E"]
    se = row["se"]
    width = np.exp(1.96 * se) - np.exp(-1.96 * se)  # around O/E = 1
    assert width == pytest.approx(1.0, abs=1e-12)
    assert row["n"] == int(np.ceil((1 - phi) / (phi * se**2)))
    # pmvalsampsize steps the SE by 1e-4 until the width reaches the target: one case fewer
    grid_se = np.ceil(se / 1e-4) * 1e-4
    assert int(np.ceil((1 - phi) / (phi * grid_se**2))) == 905
    assert row["n"] == 906


def test_slope_criterion_matches_independent_quadrature_and_monte_carlo() -> None:
    res = validation_sample_size(**PAPER)
    n = _rows(res)["calibration slope"]["n"]

    def expect(f):  # adaptive quadrature against the normal density
        value, _ = integrate.quad(lambda x: f(x) * norm.pdf(x, -5, 2.5), -40, 30, limit=200)
        return value

    w = lambda x: expit(x) * (1 - expit(x))  # noqa: E731
    i00, i01, i11 = expect(w), expect(lambda x: x * w(x)), expect(lambda x: x * x * w(x))
    se = 0.2 / (2 * 1.96)
    assert n == int(np.ceil(i00 / (se**2 * (i00 * i11 - i01**2))))
    # the empirical LP path on a large sample agrees to Monte Carlo error
    lp = np.random.default_rng(0).normal(-5, 2.5, 2_000_000)
    mc = validation_sample_size(**{**PAPER, "lp_normal": None, "lp_values": lp})
    assert _rows(mc)["calibration slope"]["n"] == pytest.approx(n, rel=0.01)
    # beta-distributed risks (the package's Test 4.2 with 1,000 draws: 1641)
    beta = _rows(validation_sample_size(**{**PAPER, "lp_normal": None, "lp_beta": (0.5, 0.5)}))
    p = np.random.default_rng(1).beta(0.5, 0.5, 4_000_000)
    mc = validation_sample_size(**{**PAPER, "lp_normal": None, "lp_values": np.log(p / (1 - p))})
    assert beta["calibration slope"]["n"] == pytest.approx(
        _rows(mc)["calibration slope"]["n"], rel=0.01
    )
    assert beta["calibration slope"]["n"] == pytest.approx(1641, rel=0.02)
    assert res.n == max(r["n"] for r in res.criteria)


def test_net_benefit_criterion_by_hand() -> None:
    phi, t, sens, spec = 0.1, 0.2, 0.7, 0.8
    res = validation_sample_size(
        prevalence=phi,
        c_statistic=0.75,
        lp_normal=(-2.5, 1.0),
        threshold=t,
        sensitivity=sens,
        specificity=spec,
    )
    row = _rows(res)["net benefit at 0.2"]
    w = (1 - phi) / phi * t / (1 - t)
    se = 0.2 / 3.92
    var = sens * (1 - sens) / phi + w * w * spec * (1 - spec) / (1 - phi)
    var += w * w * (1 - spec) ** 2 / (phi * (1 - phi))
    assert row["n"] == int(np.ceil(var / se**2))
    nb = sens * phi - (1 - spec) * (1 - phi) * t / (1 - t)
    assert row["anticipated"] == pytest.approx(nb / phi, abs=1e-12)
    # without sensitivity/specificity they come from the LP, risks taken as calibrated
    lp = np.random.default_rng(2).normal(-2.5, 1.0, 2_000_000)
    y = np.random.default_rng(3).random(len(lp)) < expit(lp)
    flag = expit(lp) >= t
    derived = _rows(
        validation_sample_size(prevalence=phi, c_statistic=0.75, lp_normal=(-2.5, 1.0), threshold=t)
    )["net benefit at 0.2"]
    assert derived["sensitivity"] == pytest.approx(flag[y].mean(), abs=0.005)
    assert derived["specificity"] == pytest.approx((~flag[~y]).mean(), abs=0.005)


def test_from_an_evaluation_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    lp = rng.normal(-1, 1.5, 500)
    y = (rng.random(500) < expit(lp)).astype(int)
    folder = tmp_path / "eval"
    folder.mkdir()
    pd.DataFrame(
        {"case_id": [f"c{i}" for i in range(500)], "label": y, "p_fusion": expit(lp)}
    ).to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"participants": {}}))
    res = from_evaluation(folder, threshold=0.3)
    assert res.prevalence == pytest.approx(y.mean())
    direct = validation_sample_size(
        prevalence=y.mean(),
        c_statistic=roc_auc_score(y, expit(lp)),
        lp_values=lp,
        threshold=0.3,
    )
    assert [r["n"] for r in res.criteria] == [r["n"] for r in direct.criteria]
    assert res.lp["kind"] == "empirical" and res.lp["n"] == 500
    # a run folder is refused: its predictions mix the training splits
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text("{}")
    with pytest.raises(ConfigError, match="run folder"):
        from_evaluation(run)


def test_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinfuse.cli import app

    args = ["samplesize", "--prevalence", "0.018", "--c-statistic", "0.8"]
    res = CliRunner().invoke(app, [*args, "--lp-normal", "-5,2.5", "--oe-ci-width", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["n"] == max(c["n"] for c in data["criteria"]) and data["criteria"][2]["n"] == 4252
    res = CliRunner().invoke(app, [*args, "--lp-normal", "-5"])
    assert res.exit_code != 0 and "two numbers" in res.output
    res = CliRunner().invoke(app, ["samplesize", "--lp-normal", "-5,2.5"])
    assert res.exit_code != 0 and "--prevalence" in res.output


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prevalence": 1.2}, "prevalence"),
        ({"c_statistic": 0.4}, "c_statistic"),
        ({"lp_beta": (1, 1)}, "exactly one"),
        ({"lp_normal": (-5, 0)}, "SD"),
        ({"c_ci_width": 0}, "positive"),
        ({"threshold": 0.1, "sensitivity": 0.5}, "both sensitivity and specificity"),
        ({"lp_normal": None, "lp_values": [0.1, 0.2]}, "at least 10"),
    ],
)
def test_bad_input(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validation_sample_size(**{**PAPER, **kwargs})


# -- development (Riley et al. 2019/2020, pmsampsize) ------------------------------------------
def test_development_criteria_are_pmsampsize_reference_figures() -> None:
    """pmsampsize's worked example (type "b", csrsquared 0.288, 24 parameters, prevalence
    0.174): 623 / 662 / 221 cases, final 662 with 115 events, EPP 4.8, shrinkage 0.905,
    max R2_CS 0.603, Nagelkerke 0.477."""
    from clinfuse.evaluation.samplesize import development_sample_size

    res = development_sample_size(parameters=24, prevalence=0.174, r2_cs=0.288)
    assert [r["n"] for r in res.criteria] == [623, 662, 221]
    assert res.n == 662 and round(res.events) == 115 and round(res.epp, 1) == 4.8
    assert round(res.shrinkage, 3) == 0.905 and round(res.max_r2_cs, 3) == 0.603
    assert round(res.as_dict()["r2_nagelkerke"], 3) == 0.477
    # a Nagelkerke R2 is the Cox-Snell R2 over its maximum: the same study
    same = development_sample_size(parameters=24, prevalence=0.174, r2_nagelkerke=0.288 / 0.6032)
    assert same.r2_cs == pytest.approx(0.288, abs=1e-4)
    assert [r["n"] for r in same.criteria] == [623, 662, 221]


def test_development_criteria_by_hand_at_other_settings() -> None:
    from clinfuse.evaluation.samplesize import development_sample_size

    p, r2, k, s, delta, margin = 0.05, 0.03, 7, 0.85, 0.02, 0.02
    res = development_sample_size(
        parameters=k,
        prevalence=p,
        r2_cs=r2,
        shrinkage=s,
        r2_difference=delta,
        intercept_margin=margin,
    )
    max_r2 = 1 - np.exp(2 * (p * np.log(p) + (1 - p) * np.log(1 - p)))
    s2 = r2 / (r2 + delta * max_r2)
    expected = [
        int(np.ceil(k / ((s - 1) * np.log(1 - r2 / s)))),
        int(np.ceil(k / ((s2 - 1) * np.log(1 - r2 / s2)))),
        int(np.ceil((1.96 / margin) ** 2 * p * (1 - p))),
    ]
    assert [r["n"] for r in res.criteria] == expected and res.n == max(expected)
    assert all(r["events"] == pytest.approx(r["n"] * p) for r in res.criteria)


def test_cox_snell_r2_from_c_matches_a_fitted_logistic_regression() -> None:
    """The quadrature equals a maximum-likelihood logistic fit on 300,000 simulated cases
    with binormal linear predictors (pmsampsize's own approach) to Monte Carlo error."""
    from sklearn.linear_model import LogisticRegression

    from clinfuse.evaluation.samplesize import cox_snell_r2_from_c

    rng = np.random.default_rng(11)
    for c, p in ((0.81, 0.77), (0.7, 0.1)):
        n = 300_000
        events = int(p * n)
        mu = np.sqrt(2) * norm.ppf(c)
        x = np.r_[rng.normal(mu, 1, events), rng.normal(0, 1, n - events)]
        y = np.r_[np.ones(events), np.zeros(n - events)]
        assert roc_auc_score(y, x) == pytest.approx(c, abs=0.003)
        q = LogisticRegression(C=np.inf).fit(x[:, None], y).predict_proba(x[:, None])[:, 1]
        gain = np.sum(y * np.log(q) + (1 - y) * np.log(1 - q))
        gain -= events * np.log(p) + (n - events) * np.log(1 - p)
        assert cox_snell_r2_from_c(c, p) == pytest.approx(1 - np.exp(-2 * gain / n), abs=0.003)
    assert cox_snell_r2_from_c(0.5001, 0.3) < 1e-6
    assert cox_snell_r2_from_c(0.9, 0.3) > cox_snell_r2_from_c(0.8, 0.3)


def test_development_from_an_evaluation_and_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinfuse.cli import app
    from clinfuse.evaluation.samplesize import (
        cox_snell_r2_from_c,
        development_from_evaluation,
        development_sample_size,
    )

    rng = np.random.default_rng(5)
    lp = rng.normal(-1, 1.2, 400)
    y = (rng.random(400) < expit(lp)).astype(int)
    folder = tmp_path / "eval"
    folder.mkdir()
    pd.DataFrame({"case_id": range(400), "label": y, "p_fusion": expit(lp)}).to_csv(
        folder / "predictions.csv", index=False
    )
    (folder / "metrics.json").write_text(json.dumps({"participants": {}}))
    res = development_from_evaluation(folder, parameters=4)
    c = roc_auc_score(y, expit(lp))
    assert res.r2_cs == pytest.approx(cox_snell_r2_from_c(c, y.mean()))
    assert res.n == development_sample_size(parameters=4, prevalence=y.mean(), c_statistic=c).n

    runner = CliRunner()
    args = ["samplesize", "--develop", "--parameters", "24", "--prevalence", "0.174"]
    out = runner.invoke(app, [*args, "--r2-cs", "0.288", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["schema"] == "clinfuse.samplesize.development.v1" and data["n"] == 662
    out = runner.invoke(
        app, ["samplesize", "--develop", "--parameters", "4", "--from", str(folder)]
    )
    assert out.exit_code == 0 and f"at least {res.n:,} cases" in out.output
    for bad, message in (
        (["samplesize", "--develop", "--prevalence", "0.2", "--r2-cs", "0.1"], "--parameters"),
        ([*args, "--r2-cs", "0.1", "--lp-normal", "-1,1"], "validation"),
        (["samplesize", "--prevalence", "0.2", "--r2-cs", "0.1"], "--develop"),
        ([*args], "exactly one"),
        ([*args, "--r2-cs", "0.7"], "largest possible"),
    ):
        out = runner.invoke(app, bad)  # ClinFuseErrors reach `main`, which prints them
        assert out.exit_code != 0 and message in out.output + str(out.exception), bad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parameters": 0}, "at least one"),
        ({"parameters": 2.5}, "whole number"),
        ({"r2_nagelkerke": 0.2}, "exactly one"),
        ({"r2_cs": 0.95}, "largest possible"),
        ({"shrinkage": 1.0}, "shrinkage"),
        ({"prevalence": 0.0}, "prevalence"),
    ],
)
def test_development_bad_input(kwargs, message) -> None:
    from clinfuse.evaluation.samplesize import development_sample_size

    with pytest.raises(ConfigError, match=message):
        development_sample_size(**{"parameters": 5, "prevalence": 0.2, "r2_cs": 0.1, **kwargs})
