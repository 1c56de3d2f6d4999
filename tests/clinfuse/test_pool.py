"""clinfuse pool-evaluations: one model's evaluations at several sites, combined from their
metrics.json only, checked against DeLong on the sites' predictions and statsmodels'
DerSimonian–Laird meta-analysis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def site_evaluations(tiny_run: Path, tiny_cohort: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny run evaluated at each of the tiny cohort's three sites, on its own manifest."""
    from clinfuse.evaluation.cli import evaluate

    frame = pd.read_csv(tiny_cohort, dtype={"case_id": str, "patient_id": str})
    out = tmp_path_factory.mktemp("pool")
    folders = {}
    for site, part in frame.groupby("site"):
        manifest = tiny_cohort.parent / f"pooltest_{site}.csv"  # file paths stay relative
        part.to_csv(manifest, index=False)
        evaluate(tiny_run, manifest, out / f"eval_{site}", n_boot=20)
        folders[str(site)] = out / f"eval_{site}"
    return folders


def test_pooled_summaries_equal_statsmodels_on_the_sites_delong_aurocs(
    site_evaluations: dict[str, Path], tiny_run: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from statsmodels.stats.meta_analysis import combine_effects

    import clinfuse
    from clinfuse.cohort import Cohort
    from clinfuse.evaluation.delong import delong_ci
    from clinfuse.evaluation.pool import pool_evaluations

    sites = sorted(site_evaluations)
    result = pool_evaluations(
        [site_evaluations[s] for s in sites], tmp_path / "pooled", names=sites
    )
    pooled = json.loads((tmp_path / "pooled" / "pooled.json").read_text())
    assert pooled == json.loads(json.dumps(result.pooled))
    assert pooled["schema"] == "clinfuse.pooled_evaluation.v1" and pooled["sites"] == sites
    model = clinfuse.load_run(tiny_run)
    auc, se, observed, expected = [], [], [], []
    for row, site in zip(pooled["per_site"], sites, strict=True):
        cohort = Cohort.from_manifest(tiny_cohort.parent / f"pooltest_{site}.csv")
        preds = model.predict(cohort)
        y = cohort.labels()
        p = preds["p_fusion"].to_numpy()
        ref = delong_ci(y, p)
        assert row["group"] == site and row["n_cases"] == len(y)
        assert row["auroc"] == pytest.approx(ref["value"], abs=1e-12)
        assert row["auroc_se"] == pytest.approx(ref["se"], rel=1e-9)
        assert row["expected_events"] == pytest.approx(p.sum(), rel=1e-9)
        auc.append(ref["value"])
        se.append(ref["se"])
        observed.append(y.sum())
        expected.append(p.sum())

    def dersimonian_laird(effect: np.ndarray, variance: np.ndarray) -> pd.Series:
        """statsmodels' DerSimonian–Laird summary. Its moment estimate of τ² is not cut at
        0 (it reports a negative τ² when Q < k − 1); the estimator truncates it, and with
        τ² = 0 the summary is the fixed-effect one."""
        res = combine_effects(effect, variance, method_re="dl")
        return res.summary_frame().loc["random effect" if res.tau2 > 0 else "fixed effect"]

    a, s = np.array(auc), np.array(se)
    re = dersimonian_laird(np.log(a / (1 - a)), (s / (a * (1 - a))) ** 2)
    meta = pooled["meta_analysis"]["auroc"]
    expit = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert meta["estimate"] == pytest.approx(expit(re["eff"]), abs=1e-9)
    assert meta["ci_low"] == pytest.approx(expit(re["ci_low"]), abs=1e-9)
    assert meta["ci_high"] == pytest.approx(expit(re["ci_upp"]), abs=1e-9)
    o, e = np.array(observed), np.array(expected)
    oe = dersimonian_laird(np.log(o / e), 1 / o)
    assert pooled["meta_analysis"]["oe_ratio"]["estimate"] == pytest.approx(
        np.exp(oe["eff"]), rel=1e-9
    )
    assert set(pooled["modalities"]) <= {"image", "note", "signal", "tabular"}
    assert pooled["modalities"], "every modality's own AUROC summary"
    table = pd.read_csv(tmp_path / "pooled" / "sites.csv")
    assert table["site"].tolist() == sites
    assert (tmp_path / "pooled" / "figures" / "forest_auroc.png").stat().st_size > 1000


def test_pooling_refuses_other_models_one_site_and_a_non_evaluation(
    site_evaluations: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from clinfuse.errors import ConfigError
    from clinfuse.evaluation.pool import pool_evaluations

    a, b, c = (site_evaluations[s] for s in sorted(site_evaluations))
    with pytest.raises(ConfigError, match="at least two sites"):
        pool_evaluations([a], tmp_path / "out")
    with pytest.raises(ConfigError, match="2 names for 3 folders"):
        pool_evaluations([a, b, c], tmp_path / "out", names=["x", "y"])
    other = tmp_path / "other"
    shutil.copytree(c, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["run"]["model_sha256"] = "0" * 64
    (other / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ConfigError, match="evaluations are of different models"):
        pool_evaluations([a, b, other], tmp_path / "out")
    pooled = pool_evaluations([a, b, other], tmp_path / "out", allow_other_models=True)
    assert len(pooled.pooled["model_sha256"]) == 3
    with pytest.raises(ConfigError, match="not an evaluation folder"):
        pool_evaluations([a, tmp_path], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
