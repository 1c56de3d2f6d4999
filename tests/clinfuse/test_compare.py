"""Model comparison: paired differences against scikit-learn, statsmodels and explicit
bootstrap loops; case matching; bad input refused with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.compare import (
    compare_evaluations,
    holm,
    paired_bootstrap,
    reclassification,
)
from clinfuse.evaluation.delong import delong_test


def _data(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    signal = y + rng.normal(0, 1.0, n)
    weak = 1 / (1 + np.exp(-(0.6 * signal - 1.2 + rng.normal(0, 0.8, n))))
    strong = 1 / (1 + np.exp(-(1.6 * signal - 1.5)))
    ids = [f"c{i:04d}" for i in range(n)]
    return ids, y, weak, strong


def _evaluation(folder: Path, ids, y, p, manifest: str = "/data/cohort/manifest.csv") -> Path:
    folder.mkdir(parents=True)
    order = np.random.default_rng(len(folder.name)).permutation(len(ids))  # any row order
    pd.DataFrame(
        {
            "case_id": np.asarray(ids)[order],
            "label": np.asarray(y)[order],
            "p_fusion": np.asarray(p)[order],
        }
    ).to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"participants": {"manifest": manifest}}))
    return folder


def test_holm_matches_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    ps = [0.01, 0.04, 0.03, 0.2, 0.001, 0.04]
    expected = multipletests(ps, method="holm")[1]
    np.testing.assert_allclose(holm(ps), expected, rtol=0, atol=1e-12)
    assert holm([0.02, None, 0.5]) == pytest.approx([0.04, None, 0.5])


def test_paired_bootstrap_is_the_explicit_loop() -> None:
    _, y, weak, strong = _data(150)
    n_boot, seed = 300, 4
    res = paired_bootstrap(
        y, weak, strong, lambda yy, pp: np.mean((pp - yy) ** 2, axis=-1), n_boot=n_boot, seed=seed
    )
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    diffs = [np.mean((strong[i] - y[i]) ** 2) - np.mean((weak[i] - y[i]) ** 2) for i in idx]
    assert res["value"] == pytest.approx(np.mean((strong - y) ** 2) - np.mean((weak - y) ** 2))
    assert res["ci_low"] == pytest.approx(np.quantile(diffs, 0.025), abs=1e-12)
    assert res["ci_high"] == pytest.approx(np.quantile(diffs, 0.975), abs=1e-12)


def test_comparison_numbers_match_the_references(tmp_path: Path) -> None:
    ids, y, weak, strong = _data()
    a = _evaluation(tmp_path / "baseline", ids, y, weak)
    # the other model also scored 25 cases the baseline did not
    extra = [f"x{i}" for i in range(25)]
    b = _evaluation(
        tmp_path / "fused",
        ids + extra,
        np.r_[y, np.ones(25, int)],
        np.r_[strong, np.full(25, 0.9)],
    )
    res = compare_evaluations([a, b], tmp_path / "cmp", thresholds="0.1,0.3", n_boot=200)
    c = res.comparison
    assert c["reference"] == "baseline" and c["n_common_cases"] == len(ids)
    models = {m["model"]: m for m in c["models"]}
    assert models["fused"]["n_dropped"] == 25 and models["baseline"]["n_dropped"] == 0
    assert models["baseline"]["auroc"] == pytest.approx(roc_auc_score(y, weak), abs=1e-12)
    assert models["fused"]["auroc"] == pytest.approx(roc_auc_score(y, strong), abs=1e-12)
    for t in (0.1, 0.3):
        flag = strong >= t
        nb = (flag & (y == 1)).sum() / len(y) - (flag & (y == 0)).sum() / len(y) * t / (1 - t)
        assert models["fused"][f"net_benefit_{t:g}"] == pytest.approx(nb, abs=1e-12)
    pair = c["pairs"][0]
    ref = delong_test(y, weak, strong)
    assert pair["delta_auroc"] == pytest.approx(
        roc_auc_score(y, strong) - roc_auc_score(y, weak), abs=1e-12
    )
    assert pair["delong_p"] == pytest.approx(ref["p_value"], rel=1e-12)
    assert pair["delong_p_holm"] == pytest.approx(ref["p_value"], rel=1e-12)  # one comparison
    assert pair["delta_auroc_ci_low"] < pair["delta_auroc"] < pair["delta_auroc_ci_high"]
    assert pair["delta_brier"] == pytest.approx(
        np.mean((strong - y) ** 2) - np.mean((weak - y) ** 2), abs=1e-12
    )
    assert pair["delta_brier_ci_low"] <= pair["delta_brier"] <= pair["delta_brier_ci_high"]
    # Δnet benefit at 0.3: the same resampled cases for both models, explicit loop
    idx = np.random.default_rng(0).integers(0, len(y), size=(200, len(y)))

    def nb(yy, pp, t=0.3):
        return ((pp >= t) & (yy == 1)).mean() - ((pp >= t) & (yy == 0)).mean() * t / (1 - t)

    diffs = [nb(y[i], strong[i]) - nb(y[i], weak[i]) for i in idx]
    assert pair["delta_net_benefit_0.3"] == pytest.approx(nb(y, strong) - nb(y, weak), abs=1e-12)
    assert pair["delta_net_benefit_0.3_ci_low"] == pytest.approx(np.quantile(diffs, 0.025))
    assert pair["delta_net_benefit_0.3_ci_high"] == pytest.approx(np.quantile(diffs, 0.975))

    # IDI: the difference of the discrimination slopes, with the same explicit loop
    def slope(yy, pp):
        return pp[yy == 1].mean() - pp[yy == 0].mean()

    assert pair["idi"] == pytest.approx(slope(y, strong) - slope(y, weak), abs=1e-12)
    idis = [slope(y[i], strong[i]) - slope(y[i], weak[i]) for i in idx]
    assert pair["idi_ci_low"] == pytest.approx(np.quantile(idis, 0.025), abs=1e-12)
    assert pair["idi_ci_high"] == pytest.approx(np.quantile(idis, 0.975), abs=1e-12)

    # categorical NRI over < 0.1, 0.1-0.3, >= 0.3, counted case by case
    def category(p):
        return 0 if p < 0.1 else (1 if p < 0.3 else 2)

    def nri(yy, pa, pb):
        moves = np.array([np.sign(category(b) - category(a)) for a, b in zip(pa, pb, strict=True)])
        return moves[yy == 1].mean(), -moves[yy == 0].mean()

    ev, nonev = nri(y, weak, strong)
    assert (pair["nri_events"], pair["nri_nonevents"]) == pytest.approx((ev, nonev), abs=1e-12)
    assert pair["nri"] == pytest.approx(ev + nonev, abs=1e-12)
    parts = np.array([nri(y[i], weak[i], strong[i]) for i in idx])
    assert pair["nri_events_ci_low"] == pytest.approx(np.quantile(parts[:, 0], 0.025), abs=1e-12)
    assert pair["nri_nonevents_ci_high"] == pytest.approx(
        np.quantile(parts[:, 1], 0.975), abs=1e-12
    )
    table = np.array(pair["reclassification"]["events"])
    assert table.sum() == y.sum() and table.shape == (3, 3)
    assert table[0, 2] == sum(
        category(a) == 0 and category(b) == 2
        for a, b in zip(weak[y == 1], strong[y == 1], strict=True)
    )
    for name in ("comparison.json", "models.csv", "pairs.csv", "report.html"):
        assert (res.out / name).exists()
    assert "reclassification" not in pd.read_csv(res.out / "pairs.csv").columns
    assert {p.name for p in (res.out / "figures").glob("*.png")} == {
        "roc.png",
        "calibration.png",
        "decision_curve.png",
    }
    page = res.report.read_text()
    assert "Paired differences against the reference" in page and "25 more" in page
    assert "Reclassification" in page and "NRI, non-events" in page and "&lt; 0.1" in page


def test_reclassification_by_hand() -> None:
    # 3 events, 3 non-events; categories < 0.2, 0.2-0.5, >= 0.5
    y = np.array([1, 1, 1, 0, 0, 0])
    ref = np.array([0.10, 0.30, 0.60, 0.10, 0.30, 0.60])
    new = np.array(
        [0.25, 0.30, 0.40, 0.10, 0.10, 0.50]
    )  # ev: up, same, down; non-ev: same, down, same
    r = reclassification(y, ref, new, [0.5, 0.2])  # any order
    assert r["nri_events"] == pytest.approx(0.0)  # 1/3 up - 1/3 down
    assert r["nri_nonevents"] == pytest.approx(1 / 3)  # 1/3 down - 0 up
    assert r["nri"] == pytest.approx(1 / 3)
    assert r["table"]["events"] == [[0, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert r["table"]["nonevents"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]  # 0.5 is in the top one


def test_several_models_get_holm_adjusted_p_values(tmp_path: Path) -> None:
    ids, y, weak, strong = _data()
    rng = np.random.default_rng(9)
    noisy = np.clip(strong + rng.normal(0, 0.1, len(y)), 0.001, 0.999)
    folders = [
        _evaluation(tmp_path / n, ids, y, p) for n, p in (("a", weak), ("b", strong), ("c", noisy))
    ]
    res = compare_evaluations(
        folders, tmp_path / "cmp", names=["base", "fused", "noisy"], n_boot=50
    )
    raw = [r["delong_p"] for r in res.comparison["pairs"]]
    assert [r["model"] for r in res.comparison["pairs"]] == ["fused", "noisy"]
    assert [r["delong_p_holm"] for r in res.comparison["pairs"]] == pytest.approx(holm(raw))


def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, tiny_run: Path) -> None:
    ids, y, weak, strong = _data(60)
    a = _evaluation(tmp_path / "a", ids, y, weak)
    b = _evaluation(tmp_path / "b", ids, y, strong, manifest="/elsewhere/manifest.csv")
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match="at least two"):
        compare_evaluations([a], out)
    with pytest.raises(ConfigError, match="different manifests"):
        compare_evaluations([a, b], out)
    with pytest.raises(ConfigError, match="one per folder"):
        compare_evaluations([a, a], out, names=["x"])
    with pytest.raises(ConfigError, match="called the same"):
        compare_evaluations([a, a], out)
    with pytest.raises(ConfigError, match="run folder"):
        compare_evaluations([a, tiny_run], out)
    with pytest.raises(ConfigError, match="not an evaluation folder"):
        compare_evaluations([a, tmp_path], out)
    flipped = _evaluation(tmp_path / "flipped", ids, 1 - y, strong)
    with pytest.raises(CohortError, match=r"case 'c0000' has outcome \d in a but \d in flipped"):
        compare_evaluations([a, flipped], out)
    other = _evaluation(tmp_path / "other", [f"z{i}" for i in range(60)], y, strong)
    with pytest.raises(CohortError, match="0 case"):
        compare_evaluations([a, other], out)
    assert not out.exists() and not list(tmp_path.glob(".cmp*"))
    res = compare_evaluations([a, b], out, allow_other_cohorts=True, n_boot=0)
    assert res.comparison["pairs"][0]["delta_brier_ci_low"] is None  # no bootstrap
    with pytest.raises(ConfigError, match="not empty"):
        compare_evaluations([a, b], out, allow_other_cohorts=True)


def test_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinfuse.cli import app

    ids, y, weak, strong = _data()
    a = _evaluation(tmp_path / "eval_a", ids, y, weak)
    b = _evaluation(tmp_path / "eval_b", ids, y, strong)
    res = CliRunner().invoke(
        app,
        [
            "compare",
            str(a),
            str(b),
            "--out",
            str(tmp_path / "cmp"),
            "--name",
            "tabular",
            "--name",
            "fused",
            "--n-boot",
            "100",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "reference tabular" in res.output and "fused" in res.output
    pairs = pd.read_csv(tmp_path / "cmp" / "pairs.csv")
    assert pairs.loc[0, "model"] == "fused" and pairs.loc[0, "reference"] == "tabular"
