"""Monitoring before outcomes arrive: the PSI by hand and its null law by simulation, each
period's comparison by hand, flags where a shift was put and nowhere else, and the
command on a real run's predictions with its refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.monitor import (
    FLAG_P,
    monitor_periods,
    psi,
    psi_p_value,
)

MODS = ["image", "note"]


def test_psi_by_hand_in_the_references_deciles():
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(0, 1, 500), rng.normal(0.5, 1.2, 200)
    edges = np.quantile(ref, np.arange(1, 10) / 10)
    total = 0.0
    for k in range(10):  # the bins one by one, the outer ones open, edges going up
        low = -np.inf if k == 0 else edges[k - 1]
        high = np.inf if k == 9 else edges[k]
        e = (np.sum((ref >= low) & (ref < high)) + 0.5) / (len(ref) + 5)
        a = (np.sum((cur >= low) & (cur < high)) + 0.5) / (len(cur) + 5)
        total += (a - e) * np.log(a / e)
    assert psi(ref, cur) == pytest.approx(total, abs=1e-12)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert psi(ref, np.full(50, 9.0)) > 2  # every case in the top bin
    assert psi(ref, []) is None and psi([], cur) is None


def test_psi_p_values_hold_their_level_when_nothing_changed():
    rng = np.random.default_rng(1)
    n, m = 300, 600
    values = [psi(rng.normal(size=m), rng.normal(size=n)) for _ in range(1500)]
    p = np.array([psi_p_value(v, m, n, 10) for v in values])
    assert 0.035 <= (p < 0.05).mean() <= 0.07
    assert psi_p_value(0.5, m, n, 10) < 1e-6


def _frames(rng: np.random.Generator, *, shift_from: int | None):
    """Development cases and 12 months of scored ones (90 a month); from month
    ``shift_from`` on, the fused logit moves up 0.8, the image is present in 40 % of cases
    and ``crp`` is reported ten times larger (a unit change)."""

    def cases(n: int, shifted: bool) -> pd.DataFrame:
        logit = rng.normal(-0.8 + 0.8 * shifted, 1.0, n)
        frame = pd.DataFrame({"logit_fusion": logit, "p_fusion": 1 / (1 + np.exp(-logit))})
        for m, rate in (("image", 0.4 if shifted else 0.9), ("note", 0.95)):
            present = rng.random(n) < rate
            frame[f"present_{m}"] = present.astype(int)
            frame[f"p_{m}"] = np.where(
                present, 1 / (1 + np.exp(-logit - rng.normal(0, 1, n))), np.nan
            )
        return frame

    development = cases(600, False).assign(split="train")
    months, parts, crp = [], [], []
    for k in range(12):
        shifted = shift_from is not None and k >= shift_from
        parts.append(cases(90, shifted))
        months += [np.datetime64(f"2024-{k + 1:02d}-10")] * 90
        crp += list(rng.normal(40, 10, 90) * (10 if shifted else 1))
    scored = pd.concat(parts, ignore_index=True)
    scored["case_id"] = [f"c{i:04d}" for i in range(len(scored))]
    scored["label"] = np.nan
    dates = np.array(months, dtype="datetime64[ns]")
    return development, scored, dates, pd.DataFrame({"crp": crp})


def _tabular() -> SimpleNamespace:  # the fitted encoder's statistics the comparison reads
    return SimpleNamespace(
        columns=["crp"], kinds_={"crp": "numeric"}, means_={"crp": 40.0}, stds_={"crp": 10.0}
    )


def test_each_period_compared_by_hand():
    from clinfuse.evaluation.compare import holm

    rng = np.random.default_rng(2)
    dev, scored, dates, values = _frames(rng, shift_from=6)
    res = monitor_periods(
        dev,
        scored,
        dates,
        MODS,
        period="month",
        thresholds=(0.3,),
        tabular=_tabular(),
        tabular_values=values,
    )
    assert [r["period"] for r in res["periods"]] == [f"2024-{k:02d}" for k in range(1, 13)]
    assert res["development"]["n"] == 600 and res["outcomes"] is None
    for k, row in enumerate(res["periods"]):
        part = scored.iloc[90 * k : 90 * (k + 1)]
        assert row["n"] == 90 and row["n_labelled"] == 0 and not row["suppressed"]
        assert row["mean_risk"] == pytest.approx(part["p_fusion"].mean())
        assert row["alert_rate"]["0.3"] == pytest.approx((part["p_fusion"] >= 0.3).mean())
        assert row["psi_fusion"]["value"] == pytest.approx(
            psi(dev["logit_fusion"], part["logit_fusion"])
        )
        share = part["present_image"].mean()
        assert row["availability"]["image"]["value"] == pytest.approx(share)
        assert row["availability"]["image"]["change"] == pytest.approx(
            share - dev["present_image"].mean()
        )
        crp = values["crp"].iloc[90 * k : 90 * (k + 1)]
        assert row["smd"]["crp"]["value"] == pytest.approx(
            (crp.mean() - 40) / np.sqrt((100 + crp.var(ddof=1)) / 2)
        )
    raw = [r["psi_fusion"]["p_value"] for r in res["periods"]]
    adjusted = [r["psi_fusion"]["p_adjusted"] for r in res["periods"]]
    assert adjusted == pytest.approx(holm(raw))


def test_flags_where_the_shift_is_and_nowhere_else():
    rng = np.random.default_rng(3)
    dev, scored, dates, values = _frames(rng, shift_from=6)
    res = monitor_periods(dev, scored, dates, MODS, tabular=_tabular(), tabular_values=values)
    flags = {r["period"]: r["flags"] for r in res["periods"]}
    for k in range(1, 7):
        assert flags[f"2024-{k:02d}"] == [], k
    for k in range(7, 13):
        text = " ".join(flags[f"2024-{k:02d}"])
        assert "fused risk distribution" in text and "image available in" in text
        assert "crp: mean shifted by" in text
        assert "note available" not in text  # the notes are as often there as before
    assert res["n_flagged_periods"] == 6
    quiet = monitor_periods(*_frames(rng, shift_from=None)[:3], MODS)
    assert quiet["n_flagged_periods"] == 0
    assert all(
        r["psi_fusion"]["p_adjusted"] >= FLAG_P or r["psi_fusion"]["value"] < 0.1
        for r in quiet["periods"]
    )


def _site_frames(rng: np.random.Generator) -> tuple:
    """Three sites, 200 development and 12 × 40 monitored cases each. site_c always had a
    higher crp and fewer images (a standing difference); from month 7 site_b's images stop
    (the scanner's feed broke) and site_a reports crp ten times smaller (a unit change)."""

    def cases(site: str, n: int, broken: bool) -> pd.DataFrame:
        logit = rng.normal(-0.8, 1.0, n)
        frame = pd.DataFrame({"logit_fusion": logit, "p_fusion": 1 / (1 + np.exp(-logit))})
        rate = {"site_a": 0.9, "site_b": 0.9, "site_c": 0.6}[site]
        for m, r in (("image", 0.0 if broken and site == "site_b" else rate), ("note", 0.95)):
            present = rng.random(n) < r
            frame[f"present_{m}"] = present.astype(int)
            frame[f"p_{m}"] = np.where(present, 1 / (1 + np.exp(-logit)), np.nan)
        crp = rng.normal(60 if site == "site_c" else 40, 10, n)
        frame["crp"] = crp / (10 if broken and site == "site_a" else 1)
        return frame.assign(site=site)

    sites = ["site_a", "site_b", "site_c"]
    dev = pd.concat([cases(s, 200, False) for s in sites], ignore_index=True)
    parts, months = [], []
    for k in range(12):
        for s in sites:
            parts.append(cases(s, 40, k >= 6))
            months += [np.datetime64(f"2024-{k + 1:02d}-10")] * 40
    scored = pd.concat(parts, ignore_index=True)
    scored["case_id"] = [f"c{i:04d}" for i in range(len(scored))]
    scored["label"] = np.nan
    return dev.assign(split="train"), scored, np.array(months, dtype="datetime64[ns]")


def test_each_site_is_compared_with_its_own_development_cases():
    rng = np.random.default_rng(7)
    dev, scored, dates = _site_frames(rng)
    pooled_stats = SimpleNamespace(
        columns=["crp"],
        kinds_={"crp": "numeric"},
        means_={"crp": float(dev["crp"].mean())},
        stds_={"crp": float(dev["crp"].std())},
    )
    common = {
        "tabular": pooled_stats,
        "tabular_values": scored[["crp"]],
        "sites": scored["site"].tolist(),
    }
    res = monitor_periods(
        dev,
        scored,
        dates,
        MODS,
        development_sites=dev["site"].tolist(),
        tabular_reference=dev[["crp"]],
        **common,
    )
    by = {e["site"]: e for e in res["by_site"]["sites"]}
    assert set(by) == {"site_a", "site_b", "site_c"} and res["by_site"]["left_out"] == []
    assert all(e["reference"] == "site" and e["n_reference"] == 200 for e in by.values())
    for name, e in by.items():
        for k, row in enumerate(e["periods"]):
            assert row["n"] == 40 and not row["suppressed"]
            text = " ".join(row["flags"])
            if name == "site_b" and k >= 6:
                assert "image available in 0 % of cases (development" in text
            elif name == "site_a" and k >= 6:
                assert "crp: mean shifted by" in text
            else:  # site_c's standing difference is its normal: never flagged
                assert row["flags"] == [], (name, k, row["flags"])
    # each row by hand: site_a's month 8 against site_a's own development cases
    row = by["site_a"]["periods"][7]
    own = dev[dev["site"] == "site_a"]
    part = scored[(scored["site"] == "site_a")].iloc[7 * 40 : 8 * 40]
    assert row["psi_fusion"]["value"] == pytest.approx(
        psi(own["logit_fusion"], part["logit_fusion"])
    )
    assert row["availability"]["image"]["change"] == pytest.approx(
        part["present_image"].mean() - own["present_image"].mean()
    )
    mean, sd = own["crp"].mean(), own["crp"].std(ddof=1)
    assert row["smd"]["crp"]["value"] == pytest.approx(
        (part["crp"].mean() - mean) / np.sqrt((sd**2 + part["crp"].var(ddof=1)) / 2)
    )
    # Holm across every site's periods together (36 per comparison)
    from clinfuse.evaluation.compare import holm

    raw = [r["psi_fusion"]["p_value"] for e in by.values() for r in e["periods"]]
    got = [r["psi_fusion"]["p_adjusted"] for e in by.values() for r in e["periods"]]
    assert got == pytest.approx(holm(raw))
    assert res["by_site"]["n_flagged_periods"] == 12
    from clinfuse.evaluation.figures import _flag_subject, monitoring_sites_figure

    assert monitoring_sites_figure(res | {"column": "date"}) is not None
    flags = {_flag_subject(f) for e in by.values() for r in e["periods"] for f in r["flags"]}
    assert flags == {"crp", "image"}
    assert _flag_subject("fused risk distribution: major shift (PSI 0.40)") == "fused risk"
    # against the pooled development instead, site_c's standing difference would be flagged
    pooled = monitor_periods(dev, scored, dates, MODS, **common)
    site_c = next(e for e in pooled["by_site"]["sites"] if e["site"] == "site_c")
    assert site_c["reference"] == "all" and site_c["n_flagged_periods"] >= 10


def test_a_site_with_too_few_cases_is_named_not_compared():
    rng = np.random.default_rng(8)
    dev, scored, dates = _site_frames(rng)
    sites = scored["site"].where(scored.index % 40 != 0, "site_d").tolist()  # 36 cases
    res = monitor_periods(dev, scored, dates, MODS, sites=sites, min_size=37)
    assert res["by_site"]["left_out"] == [{"site": "site_d", "n": 36}]
    one = monitor_periods(dev, scored, dates, MODS, sites=["site_a"] * len(scored))
    assert one["by_site"] is None  # one site: the pooled periods are the site's
    unknown = [None if i % 40 == 0 else s for i, s in enumerate(scored["site"])]
    res = monitor_periods(dev, scored, dates, MODS, sites=unknown, min_size=37)
    assert res["by_site"]["left_out"] == [{"site": "(missing)", "n": 36}]  # named as such


def test_small_periods_are_counted_not_compared_and_known_outcomes_are_evaluated():
    rng = np.random.default_rng(4)
    dev, scored, dates, _ = _frames(rng, shift_from=None)
    scored = scored.iloc[:200].copy()  # January, February and 20 cases of March
    dates = dates[:200]
    dates[0] = np.datetime64("NaT")
    scored["label"] = (rng.random(200) < scored["p_fusion"]).astype(float)
    scored.loc[150:, "label"] = np.nan  # outcomes not known yet
    res = monitor_periods(dev, scored, dates, MODS, min_size=30)
    assert res["n_undated"] == 1
    assert [r["suppressed"] for r in res["periods"]] == [False, False, True]
    assert res["periods"][2]["n"] == 20 and "psi_fusion" not in res["periods"][2]
    assert [r["n_labelled"] for r in res["periods"]] == [89, 60, 0]
    outcomes = res["outcomes"]
    assert outcomes["n_dated"] == 149 and len(outcomes["cusum"]["charts"]) == 2
    # with the sites: each site's charts of its own known outcomes
    from clinfuse.evaluation.cusum import cusum_by_group

    sites = np.array(["A", "B"] * 100, dtype=object)
    sites[1] = np.nan  # a case without a site
    by_site = monitor_periods(dev, scored, dates, MODS, min_size=30, sites=sites)["outcomes"]
    known = scored["label"].notna().to_numpy()
    expected = cusum_by_group(
        scored["label"].to_numpy(float)[known],
        scored["p_fusion"].to_numpy(float)[known],
        dates[known],
        sites[known],
        case_ids=scored["case_id"].astype(str).to_numpy()[known].tolist(),
        min_size=30,
    )
    assert by_site["cusum_by_site"] == expected
    assert set(expected["groups"]) == {"A", "B"} and set(expected["left_out"]) == {"(missing)"}


def _dated(tiny_cohort: Path, pending: int) -> Path:
    """The tiny cohort with monthly dates through 2024, its last ``pending`` labels unknown."""
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    frame.insert(
        3, "encounter_date", [f"2024-{1 + i * 12 // len(frame):02d}-15" for i in range(len(frame))]
    )
    frame.loc[len(frame) - pending :, "label"] = ""
    digest = hashlib.sha256(frame.to_csv().encode()).hexdigest()[:10]
    path = tiny_cohort.with_name(f"monitored_{digest}.csv")
    frame.to_csv(path, index=False)
    return path


def test_monitor_command_on_a_runs_predictions(tiny_run, tiny_cohort, tmp_path, capsys):
    from clinfuse.cli import main

    manifest = _dated(tiny_cohort, pending=20)
    preds = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(manifest), "--out", str(preds)]) == 0
    out = tmp_path / "mon"
    args = ["monitor", str(tiny_run), str(preds), "--out", str(out)]
    args += ["--time-column", "encounter_date", "--period", "quarter", "--min-size", "5"]
    assert main([*args, "--cusum-false-alarm", "0.02"]) == 0
    printed = capsys.readouterr().out
    assert "monitored 64 dated cases in 4 quarters" in printed
    summary = json.loads((out / "monitoring.json").read_text())
    assert summary["schema"] == "clinfuse.monitoring.v1" and summary["column"] == "encounter_date"
    assert [r["n"] for r in summary["periods"]] == [16, 16, 16, 16]
    assert [r["n_labelled"] for r in summary["periods"]] == [16, 16, 12, 0]
    run_preds = pd.read_csv(tiny_run / "predictions.csv")
    assert summary["development"]["n"] == int(run_preds["split"].isin(["train", "val"]).sum())
    assert summary["outcomes"]["n_dated"] == 44
    assert summary["outcomes"]["cusum"]["false_alarm"] == 0.02
    by_site = summary["outcomes"]["cusum_by_site"]  # the manifest's sites, 5+ cases each
    charted = sorted([*by_site["groups"], *by_site["left_out"]])
    assert charted == sorted(pd.read_csv(manifest)["site"].unique())
    assert by_site["false_alarm_each"] == pytest.approx(0.02 / len(by_site["groups"]))
    table = pd.read_csv(out / "monitoring.csv")
    assert list(table["period"]) == ["2024Q1", "2024Q2", "2024Q3", "2024Q4"]
    assert "psi_fusion" in table and "smd_crp" in table
    report = (out / "report.html").read_text()
    assert "clinfuse monitoring report" in report and "Outcomes known so far" in report
    assert (out / "figures" / "monitoring.png").exists()
    # every site's quarters, each against its own development cases (the run's manifest)
    sites = summary["by_site"]["sites"]
    assert sorted(e["site"] for e in sites) == sorted(pd.read_csv(manifest)["site"].unique())
    dev_ids = run_preds.loc[run_preds["split"].isin(["train", "val"]), "case_id"]
    dev_sites = pd.read_csv(tiny_cohort).set_index("case_id").loc[dev_ids, "site"]
    for e in sites:
        assert e["reference"] == "site" and e["n_reference"] == int((dev_sites == e["site"]).sum())
    by_site_csv = pd.read_csv(out / "monitoring_by_site.csv")
    assert len(by_site_csv) == 4 * len(sites) and set(by_site_csv["reference"]) == {"site"}
    assert "<h2>By site</h2>" in report and "Monitoring by site" in report  # table, figure
    assert "by site (3 compared, 3 with their own development cases" in printed
    assert (out / "figures" / "monitoring_sites.png").exists()

    # refusals: each names the file or field and leaves nothing behind
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError, match="no provenance file"):
        from clinfuse.evaluation.monitor import monitor_predictions

        bare = tmp_path / "bare.csv"
        bare.write_text(preds.read_text())
        monitor_predictions(tiny_run, bare, bad, time_column="encounter_date")
    with pytest.raises(CohortError, match="'admitted' is not in the manifest"):
        monitor_predictions(tiny_run, preds, bad, time_column="admitted")
    with pytest.raises(ConfigError, match="not empty"):
        monitor_predictions(tiny_run, preds, out, time_column="encounter_date")
    moved = tmp_path / "moved.csv"
    manifest.rename(moved)
    try:
        with pytest.raises(ConfigError, match="scored manifest is not there"):
            monitor_predictions(tiny_run, preds, bad, time_column="encounter_date")
        res = monitor_predictions(
            tiny_run, preds, bad, time_column="encounter_date", manifest=moved, min_size=5
        )
        assert res.summary["manifest"] == str(moved.resolve())
    finally:
        moved.rename(manifest)
    assert (
        main(
            [
                "monitor",
                str(tiny_run),
                str(preds),
                "--out",
                str(tmp_path / "x"),
                "--time-column",
                "encounter_date",
                "--period",
                "week",
            ]
        )
        == 1
    )
    assert "unknown period 'week'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_reference_table_replaces_the_runs_development_cases(tiny_run, tiny_cohort, tmp_path):
    """--reference: the run's own development cases scored by `clinfuse predict` give the
    same comparison as the run's predictions.csv; a run assembled from a federation (no
    case in it) is refused without one, naming the option, and monitored with one."""
    import shutil

    from clinfuse.cli import main
    from clinfuse.evaluation.monitor import monitor_predictions

    manifest = _dated(tiny_cohort, pending=20)
    preds = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(manifest), "--out", str(preds)]) == 0
    run_preds = pd.read_csv(tiny_run / "predictions.csv", dtype={"case_id": str})
    dev_ids = set(run_preds.loc[run_preds["split"].isin(["train", "val"]), "case_id"])
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    dev_manifest = manifest.with_name(f"dev_{manifest.name}")
    frame[frame["case_id"].isin(dev_ids)].to_csv(dev_manifest, index=False)
    ref = tmp_path / "dev.csv"
    assert main(["predict", str(tiny_run), str(dev_manifest), "--out", str(ref)]) == 0
    kw = {"time_column": "encounter_date", "period": "quarter", "min_size": 5}
    default = monitor_predictions(tiny_run, preds, tmp_path / "a", **kw).summary
    given = monitor_predictions(tiny_run, preds, tmp_path / "b", reference=ref, **kw).summary
    assert given["reference"] == str(ref.resolve()) and default["reference"] is None
    assert "reference cases (<code>dev.csv</code>" in (tmp_path / "b" / "report.html").read_text()
    assert given["development"]["n"] == default["development"]["n"] == len(dev_ids)
    for a, b in zip(default["periods"], given["periods"], strict=True):
        assert a["n"] == b["n"]
        assert a["psi_fusion"]["value"] == pytest.approx(b["psi_fusion"]["value"], abs=1e-6)
        for m, stat in a["psi"].items():
            assert stat["value"] == pytest.approx(b["psi"][m]["value"], abs=1e-6), m
        for col, stat in a["smd"].items():
            assert stat["value"] == pytest.approx(b["smd"][col]["value"], abs=1e-9), col
    for e_a, e_b in zip(default["by_site"]["sites"], given["by_site"]["sites"], strict=True):
        assert (e_a["site"], e_a["n_reference"]) == (e_b["site"], e_b["n_reference"])
    # a run assembled from a federation: the model, no case
    assembled = tmp_path / "assembled"
    assembled.mkdir()
    shutil.copy(tiny_run / "config.yaml", assembled / "config.yaml")
    shutil.copytree(tiny_run / "model", assembled / "model")
    (assembled / "run.json").write_text(json.dumps({"federated": True, "evaluated": False}))
    p2, r2 = tmp_path / "p2.csv", tmp_path / "dev2.csv"
    assert main(["predict", str(assembled), str(manifest), "--out", str(p2)]) == 0
    assert main(["predict", str(assembled), str(dev_manifest), "--out", str(r2)]) == 0
    with pytest.raises(ConfigError, match="development cases stayed at the sites") as e:
        monitor_predictions(assembled, p2, tmp_path / "c", **kw)
    assert "--reference" in str(e.value)
    bare = tmp_path / "bare.csv"
    bare.write_text(r2.read_text())  # no provenance: model and manifest unknown
    with pytest.raises(ConfigError, match="reference table has no provenance"):
        monitor_predictions(assembled, p2, tmp_path / "c", reference=bare, **kw)
    res = monitor_predictions(assembled, p2, tmp_path / "c", reference=r2, **kw).summary
    assert [r["n"] for r in res["periods"]] == [r["n"] for r in default["periods"]]
    assert not (tmp_path / "c.partial").exists()
