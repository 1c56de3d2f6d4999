"""Funnel plots: each group's observed and expected events and z by hand, the limits'
false-alarm rate by simulation, a shifted site flagged, and the report's funnel."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2, norm

from clinfuse.evaluation.funnel import funnel_data, funnel_limits


def _cohort(rng: np.random.Generator, sizes: dict[str, int], odds: dict[str, float] | None = None):
    """Cases of the named groups; a group's true odds are ``odds[g]`` × the model's."""
    groups = np.concatenate([[g] * n for g, n in sizes.items()])
    p = 1 / (1 + np.exp(-rng.normal(-1.0, 1.0, len(groups))))
    factor = np.array([(odds or {}).get(g, 1.0) for g in groups])
    true = p / (1 - p) * factor
    y = (rng.random(len(groups)) < true / (1 + true)).astype(float)
    return y, p, groups


def test_each_groups_counts_z_and_dispersion_by_hand():
    y, p, groups = _cohort(np.random.default_rng(0), {"A": 300, "B": 150, "C": 60})
    funnel = funnel_data(y, p, groups)
    assert [g["group"] for g in funnel["groups"]] == ["A", "B", "C"]
    zs = []
    for g in funnel["groups"]:
        sel = groups == g["group"]
        o, e = y[sel].sum(), p[sel].sum()
        v = np.sum(p[sel] * (1 - p[sel]))
        assert (g["observed"], g["n_cases"]) == (o, sel.sum())
        assert g["expected"] == pytest.approx(e) and g["variance"] == pytest.approx(v)
        assert g["oe"] == pytest.approx(o / e)
        assert g["z"] == pytest.approx((o - e) / np.sqrt(v))
        zs.append(g["z"])
        expected = "99.8 %" if abs(g["z"]) > 3.0902 else "95 %" if abs(g["z"]) > 1.95996 else None
        assert g["outside"] == expected
    d = funnel["dispersion"]
    assert d["chi2"] == pytest.approx(np.sum(np.square(zs))) and d["df"] == 3
    lo, hi = np.percentile(zs, [10, 90])  # Winsorized
    assert d["phi"] == pytest.approx(np.mean(np.square(np.clip(zs, lo, hi))))
    assert d["p_value"] == pytest.approx(chi2.sf(d["chi2"], 3))
    assert not d["widened"]  # three groups are too few to widen the limits
    assert all(g["outside_overdispersed"] == g["outside"] for g in funnel["groups"])
    assert funnel["kappa"] == pytest.approx(np.sum(p * (1 - p)) / p.sum())
    assert funnel["overall"]["oe"] == pytest.approx(y.sum() / p.sum())
    json.dumps(funnel)  # metrics.json-ready


def test_the_limits_hold_their_level_when_the_model_is_right():
    rng = np.random.default_rng(1)
    sizes = {f"s{k:02d}": int(n) for k, n in enumerate(rng.integers(80, 600, 40))}
    outside_95, outside_998, ratios, widened = 0, 0, [], 0
    for _ in range(50):  # 2,000 groups in all, outcomes drawn from the model's risks
        y, p, groups = _cohort(rng, sizes)
        funnel = funnel_data(y, p, groups)
        outside_95 += sum(g["outside"] is not None for g in funnel["groups"])
        outside_998 += sum(g["outside"] == "99.8 %" for g in funnel["groups"])
        ratios.append(funnel["dispersion"]["chi2"] / funnel["dispersion"]["df"])
        widened += funnel["dispersion"]["widened"]
    assert 0.035 <= outside_95 / 2000 <= 0.065, outside_95
    assert outside_998 / 2000 <= 0.006, outside_998
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.06)  # Σ z² / k
    assert widened <= 5  # the Winsorized φ seldom exceeds 1 when the model is right
    assert sum(g["outside_random_effects"] is not None for g in funnel["groups"]) <= sum(
        g["outside"] is not None for g in funnel["groups"]
    )


def test_a_site_whose_odds_doubled_is_flagged_and_the_limits_follow_the_formula():
    rng = np.random.default_rng(2)
    y, p, groups = _cohort(rng, {"A": 400, "B": 400, "C": 400, "D": 400}, odds={"C": 2.0})
    funnel = funnel_data(y, p, groups)
    flagged = {g["group"]: g["outside"] for g in funnel["groups"]}
    assert flagged["C"] == "99.8 %" and funnel["dispersion"]["p_value"] < 0.001
    c = next(g for g in funnel["groups"] if g["group"] == "C")
    assert c["z"] > 3.09 and c["oe"] > 1.2
    # the limits: 1 ± z·√(κE)/E, narrowing as the group grows
    e = np.array([5.0, 50.0, 500.0])
    low, high = funnel_limits(e, 0.8, 0.95)
    assert high == pytest.approx(1 + norm.ppf(0.975) * np.sqrt(0.8 * e) / e)
    assert low == pytest.approx(np.maximum(1 - norm.ppf(0.975) * np.sqrt(0.8 * e) / e, 0))
    assert np.all(np.diff(high) < 0)


def test_overdispersion_widens_the_limits():
    rng = np.random.default_rng(3)
    odds = {f"s{k}": float(np.exp(rng.normal(0, 0.45))) for k in range(12)}
    y, p, groups = _cohort(rng, dict.fromkeys(odds, 300), odds=odds)
    funnel = funnel_data(y, p, groups)
    phi = funnel["dispersion"]["phi"]
    assert phi > 2 and funnel["dispersion"]["widened"]
    for g in funnel["groups"]:
        widened = abs(g["z"]) / np.sqrt(phi)
        assert g["outside_overdispersed"] == (
            "99.8 %" if widened > 3.0902 else "95 %" if widened > 1.95996 else None
        )
    n_out = sum(g["outside"] is not None for g in funnel["groups"])
    assert sum(g["outside_overdispersed"] is not None for g in funnel["groups"]) < n_out


def test_additive_random_effects_by_hand_and_by_simulation():
    """τ² by the module's formula on one cohort, each group's z against √(V/E² + τ²); over
    simulated cohorts whose 60 groups' true O/E spread with SD 0.1 around the model, the
    random-effects limits keep most of the spread inside, and three groups whose odds are
    × 1.8 are still flagged."""
    from clinfuse.evaluation.funnel import _WINSORIZED_SQUARE

    def cohort(rng: np.random.Generator, outliers: int) -> tuple:
        sizes = {f"g{k:02d}": int(np.exp(rng.uniform(np.log(50), np.log(5000)))) for k in range(60)}
        odds = {g: float(np.exp(rng.normal(0, 0.12))) for g in sizes}
        odds |= {f"g{k:02d}": 1.8 for k in range(outliers)}
        return _cohort(rng, sizes, odds)

    y, p, groups = cohort(np.random.default_rng(5), 0)
    funnel = funnel_data(y, p, groups)
    d, rows = funnel["dispersion"], funnel["groups"]
    w = np.array([g["expected"] ** 2 / g["variance"] for g in rows])
    q = len(rows) * d["phi"] / _WINSORIZED_SQUARE
    tau2 = max(0.0, (q - (len(rows) - 1)) / (w.sum() - np.sum(w**2) / w.sum()))
    assert d["tau2"] == pytest.approx(tau2) and d["random_effects"] and tau2 > 0
    for g in rows:
        z = (g["oe"] - 1) / np.sqrt(g["variance"] / g["expected"] ** 2 + tau2)
        assert g["z_random_effects"] == pytest.approx(z)
    e = np.array([5.0, 500.0])
    _, high = funnel_limits(e, 0.8, 0.95, tau2)
    assert high == pytest.approx(1 + norm.ppf(0.975) * np.sqrt(0.8 / e + tau2))
    rng = np.random.default_rng(6)
    plain, random_effects, caught = [], [], []
    for _ in range(20):
        rows = funnel_data(*cohort(rng, 3))["groups"]
        others = rows[3:]
        plain.append(np.mean([g["outside"] is not None for g in others]))
        random_effects.append(np.mean([g["outside_random_effects"] is not None for g in others]))
        caught.append(np.mean([g["outside_random_effects"] is not None for g in rows[:3]]))
    # measured: 23.9 % of the spread groups outside the model's 95 % limits, 5.4 % outside
    # the random-effects ones, and 85 % of the outliers caught
    assert np.mean(plain) > 0.15 and np.mean(random_effects) < 0.1
    assert np.mean(caught) > 0.7


def test_group_metrics_keep_suppressed_groups_out_of_the_funnel():
    from clinfuse.evaluation.subgroups import group_metrics, subgroup_table

    y, p, groups = _cohort(np.random.default_rng(4), {"A": 300, "B": 200, "tiny": 12})
    res = group_metrics(y, p, groups, threshold=0.3)
    assert [g["group"] for g in res["funnel"]["groups"]] == ["A", "B"]
    shown = groups != "tiny"
    assert res["funnel"] == funnel_data(y[shown], p[shown], groups[shown])
    table = subgroup_table(res).set_index("group")
    assert table.loc["A", "funnel_z"] == pytest.approx(res["funnel"]["groups"][0]["z"])
    assert pd.isna(table.loc["tiny", "funnel_z"])


def test_the_report_and_the_model_card_show_the_funnel(tiny_run, tiny_cohort, tmp_path):
    from clinfuse.evaluation.evaluate import evaluate_run

    # most of the women's non-events turned into events: far more than the model expects
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    women = frame.index[(frame["sex"] == "F") & (frame["label"] == "0")]
    frame.loc[women[5:], "label"] = "1"
    manifest = tiny_cohort.parent / "women_shifted.csv"
    frame.to_csv(manifest, index=False)
    out = tmp_path / "ev"
    res = evaluate_run(tiny_run, manifest, out, subgroups=["sex"], n_boot=0, min_group_size=5)
    funnel = res.metrics["subgroups"]["sex"]["funnel"]
    verdicts = {g["group"]: g["outside"] for g in funnel["groups"]}
    assert verdicts["F"] == "99.8 %", funnel
    html = (out / "report.html").read_text()
    assert "Funnel plot (events against the model's expectation" in html
    assert (out / "figures" / "funnel.png").read_bytes()[:4] == b"\x89PNG"
    card = [line for line in res.metrics["model_card"]["limitations"] if "by sex" in line]
    assert len(card) == 1 and card[0].startswith("Outside the funnel plot's 99.8 % limits by sex")
    assert "F (O/E" in card[0] and "M (O/E" not in card[0]


def test_the_apps_verdicts_name_the_random_effects_limits_where_they_differ():
    from clinfuse.review.charts import funnel_spec
    from clinfuse.review.cohort import _funnel_verdicts

    rng = np.random.default_rng(3)
    odds = {f"s{k:02d}": float(np.exp(rng.normal(0, 0.45))) for k in range(12)}
    funnel = funnel_data(*_cohort(rng, dict.fromkeys(odds, 300), odds=odds))
    assert funnel["dispersion"]["random_effects"]
    verdicts = _funnel_verdicts({"funnel": funnel})
    differ = [g for g in funnel["groups"] if g["outside"] != g["outside_random_effects"]]
    assert differ  # the wider limits take some groups back in
    for g in funnel["groups"]:
        text = verdicts[g["group"]]
        assert ("; with random effects: " in text) == (g in differ), text
    spec = funnel_spec(funnel, "site")
    lines = {row["line"] for row in spec["layer"][0]["data"]["values"]}
    assert "95 % high, random effects" in lines and "99.8 % low" in lines
