"""Random-effects meta-analysis against statsmodels and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t as student_t

from clinfuse.evaluation.meta import auroc_meta_analysis, oe_meta_analysis, random_effects


def test_dersimonian_laird_matches_statsmodels() -> None:
    from statsmodels.stats.meta_analysis import combine_effects

    rng = np.random.default_rng(3)
    for k in (2, 3, 7):
        y = rng.normal(0.4, 0.3, k)
        v = rng.uniform(0.005, 0.05, k)
        ours = random_effects(y, v)
        ref = combine_effects(y, v, method_re="dl")
        assert ours["estimate"] == pytest.approx(ref.mean_effect_re, abs=1e-12)
        assert ours["se"] == pytest.approx(ref.sd_eff_w_re, abs=1e-12)
        assert ours["tau2"] == pytest.approx(ref.tau2, abs=1e-12)
        assert ours["q"] == pytest.approx(ref.q, abs=1e-10)
        assert ours["i2"] == pytest.approx(ref.i2, abs=1e-12)
        low, high = ref.conf_int()[1]  # the random-effects row
        assert (ours["ci_low"], ours["ci_high"]) == pytest.approx((low, high), abs=1e-12)
        if k >= 3:  # Higgins' prediction interval, by hand
            half = student_t.ppf(0.975, k - 2) * np.sqrt(ours["tau2"] + ours["se"] ** 2)
            assert ours["pi_low"] == pytest.approx(ours["estimate"] - half, abs=1e-12)
            assert ours["pi_high"] == pytest.approx(ours["estimate"] + half, abs=1e-12)
        else:
            assert ours["pi_low"] is None


def test_homogeneous_clusters_have_no_between_variance() -> None:
    res = random_effects([0.5, 0.5, 0.5], [0.01, 0.02, 0.04])
    assert res["tau2"] == 0.0 and res["i2"] == 0.0 and res["estimate"] == pytest.approx(0.5)


def test_auroc_is_pooled_on_the_logit_scale() -> None:
    a = np.array([0.70, 0.80, 0.85, 0.75])
    se = np.array([0.03, 0.025, 0.04, 0.03])
    res = auroc_meta_analysis(a, se)
    logit = random_effects(np.log(a / (1 - a)), (se / (a * (1 - a))) ** 2)
    expit = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert res["estimate"] == pytest.approx(expit(logit["estimate"]), abs=1e-12)
    assert res["pi_low"] == pytest.approx(expit(logit["pi_low"]), abs=1e-12)
    assert res["ci_low"] < res["estimate"] < res["ci_high"]
    assert res["tau2"] == pytest.approx(logit["tau2"]) and res["scale"] == "logit"


def test_oe_ratio_is_pooled_on_the_log_scale_with_poisson_variance() -> None:
    from statsmodels.stats.meta_analysis import combine_effects

    from clinfuse.evaluation.calibration import observed_expected

    o = np.array([30.0, 55.0, 12.0])
    e = np.array([25.0, 61.5, 18.2])
    res = oe_meta_analysis(o, e)
    ref = combine_effects(np.log(o / e), 1 / o, method_re="dl")
    assert res["estimate"] == pytest.approx(np.exp(ref.mean_effect_re), abs=1e-12)
    low, high = ref.conf_int()[1]
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((np.exp(low), np.exp(high)), abs=1e-12)
    assert res["scale"] == "log" and res["tau2"] == pytest.approx(ref.tau2, abs=1e-12)
    # one cluster's log-scale variance is the one behind observed_expected's interval
    y = np.r_[np.ones(30), np.zeros(70)]
    one = observed_expected(y, np.full(100, 0.25))
    assert np.log(one["ci_high"] / one["value"]) == pytest.approx(1.959964 / np.sqrt(30), abs=1e-6)
    with pytest.raises(ValueError, match="observed"):
        oe_meta_analysis([0, 4], [2.0, 3.0])


@pytest.mark.parametrize(
    ("est", "var", "message"),
    [([0.5], [0.01], "at least two"), ([0.5, 0.6], [0.01, 0.0], "positive"), ([0.5], [], "same")],
)
def test_bad_input(est, var, message) -> None:
    with pytest.raises(ValueError, match=message):
        random_effects(est, var)
    with pytest.raises(ValueError, match="strictly between"):
        auroc_meta_analysis([1.0, 0.8], [0.01, 0.02])
