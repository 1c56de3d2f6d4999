"""Reviewing a cohort scored later by ``clinfuse predict`` (``clinfuse app RUN --predictions P``):
provenance, band, explanations kept apart from the run's own cases, refusals, pages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from clinfuse.errors import ConfigError
from clinfuse.review.runview import calibration_band, open_run_view
from clinfuse.review.store import ReviewStore, default_db_path
from clinfuse.scored import model_version, provenance_path, read_provenance, run_fingerprint

ENTRY = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"


def _copy_scored(scored_cohort, tmp_path) -> Path:
    """The scored table and its provenance copied to ``tmp_path`` (tests that write)."""
    src = Path(scored_cohort["predictions"])
    dest = tmp_path / src.name
    shutil.copy(src, dest)
    shutil.copy(provenance_path(src), provenance_path(dest))
    return dest


def test_predict_records_the_model_version_and_manifest(review_run, scored_cohort):
    table = Path(scored_cohort["predictions"])
    info = read_provenance(table)
    assert info is not None
    assert (
        info["model_version"]
        == run_fingerprint(review_run["run"])
        == model_version(review_run["run"])
    )
    assert Path(info["manifest"]) == Path(scored_cohort["manifest"]).resolve()
    assert info["n_cases"] == len(pd.read_csv(table)) == 24
    assert provenance_path(table).name == "new.provenance.json"


def test_scored_cohort_worklist_and_band_use_the_runs_validation_split(review_run, scored_cohort):
    view = open_run_view(review_run["run"], predictions=scored_cohort["predictions"], n_boot=50)
    scored = pd.read_csv(scored_cohort["predictions"], dtype={"case_id": str})
    assert view.case_ids == list(scored["case_id"])
    assert view.cohort_path == Path(scored_cohort["manifest"]).resolve()
    assert view.evaluation is None
    # the band: the run's calibrator refitted on bootstrap resamples of the run's own
    # validation cases, mapping the scored cases' logits
    run_preds = pd.read_csv(Path(review_run["run"]) / "predictions.csv")
    val = run_preds[run_preds["split"] == "val"]
    low, high = calibration_band(
        val["logit_fusion"].to_numpy(float),
        val["label"].to_numpy(float),
        scored["logit_fusion"].to_numpy(float),
        method=view.config.calibration.method,
        n_boot=50,
    )
    p = scored["p_fusion"].to_numpy(float)
    np.testing.assert_allclose(view.predictions["risk_low"], np.minimum(low, p))
    np.testing.assert_allclose(view.predictions["risk_high"], np.maximum(high, p))
    table = view.worklist()
    assert "label" not in table.columns and len(table) == 24
    assert set(table["site"]) <= {"site_a", "site_b", "site_c"} and table["site"].all()
    assert "24 cases" in (view.source_note or "") and "new.csv" in (view.source_note or "")
    assert view.app_command.endswith(f"--predictions {scored_cohort['predictions']}")


def test_scored_explanations_never_touch_the_runs_own(review_run, scored_cohort, tmp_path):
    """The scored cohort reuses the development cohort's case ids for other patients: its
    explanations go beside its table, and the run's own cases keep theirs."""
    table = _copy_scored(scored_cohort, tmp_path)
    cid = review_run["explained_case"]
    own = open_run_view(review_run["run"], n_boot=10)
    own_before = own.case_view(cid).explanation
    assert own_before is not None
    view = open_run_view(review_run["run"], predictions=table, n_boot=10)
    assert cid in view.case_ids
    assert view.case_view(cid).explanation is None  # not the development patient's
    result = view.compute_explanation(cid, note_max_evals=8)
    folder = tmp_path / "new.explanations"
    assert (folder / "cases" / cid / "explanation.json").exists()
    index = json.loads((folder / "index.json").read_text())
    assert index["model_version"] == view.fingerprint
    assert Path(index["cohort"]) == Path(scored_cohort["manifest"]).resolve()
    ms = result["modality_shapley"]
    logit = float(view.prediction(cid)["logit_fusion"])
    assert ms["base_value"] + sum(ms["phi"].values()) == pytest.approx(logit, abs=1e-4)
    reopened = open_run_view(review_run["run"], predictions=table, n_boot=10)
    assert reopened.case_view(cid).explanation["modality_shapley"] == ms
    assert open_run_view(review_run["run"], n_boot=10).case_view(cid).explanation == own_before


def test_explain_caches_in_the_run_only_for_its_own_cohort(review_run, scored_cohort, tmp_path):
    from clinfuse.explain.report import explain_run

    run = Path(review_run["run"])
    before = (run / "explanations" / "modality_shapley.csv").read_bytes()
    messages: list[str] = []
    out = tmp_path / "expl_new"
    explain_run(run, scored_cohort["manifest"], out, n_boot=0, log=messages.append)
    assert (run / "explanations" / "modality_shapley.csv").read_bytes() == before
    assert any("not cached in" in m for m in messages)
    index = json.loads((out / "index.json").read_text())
    assert index["model_version"] == run_fingerprint(run)
    # that folder is the scored cohort's explanations in the app
    view = open_run_view(run, predictions=scored_cohort["predictions"], explanations=out)
    row = view.modality_shapley_row(view.case_ids[0])
    frame = pd.read_csv(out / "modality_shapley.csv", dtype={"case_id": str})
    assert row["logit_fusion"] == pytest.approx(float(frame["logit_fusion"].iloc[0]))


def test_refusals_name_the_problem(review_run, scored_cohort, tmp_path):
    run = review_run["run"]
    with pytest.raises(ConfigError, match="does not exist") as e:
        open_run_view(run, predictions=tmp_path / "nope.csv")
    assert "clinfuse predict" in str(e.value)
    # scored by another model version
    table = _copy_scored(scored_cohort, tmp_path)
    info = json.loads(provenance_path(table).read_text())
    provenance_path(table).write_text(json.dumps({**info, "model_version": "0" * 16}))
    with pytest.raises(ConfigError, match=r"scored by model version 0{16}") as e:
        open_run_view(run, predictions=table)
    assert "rescore" in str(e.value)
    provenance_path(table).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the provenance"):
        open_run_view(run, predictions=table)
    provenance_path(table).write_text(json.dumps(info))
    # explanations of another cohort
    with pytest.raises(ConfigError, match="explanations are of the cohort"):
        open_run_view(
            run, predictions=table, explanations=Path(review_run["root"]) / "explanations"
        )
    with pytest.raises(ConfigError, match="--explanations goes with --predictions"):
        open_run_view(run, explanations=tmp_path)
    # a table that is not a predict output, or that repeats a case
    frame = pd.read_csv(table, dtype={"case_id": str})
    frame.drop(columns=["logit_fusion"]).to_csv(table, index=False)
    with pytest.raises(ConfigError, match=r"lacks columns \['logit_fusion'\]"):
        open_run_view(run, predictions=table)
    pd.concat([frame, frame.iloc[:1]]).to_csv(table, index=False)
    with pytest.raises(ConfigError, match="appears twice"):
        open_run_view(run, predictions=table)


def test_a_table_without_provenance_needs_the_cohort(review_run, scored_cohort, tmp_path):
    table = _copy_scored(scored_cohort, tmp_path)
    provenance_path(table).unlink()
    view = open_run_view(review_run["run"], predictions=table, n_boot=10)
    assert view.cohort is None and "pass --cohort" in (view.cohort_error or "")
    view = open_run_view(
        review_run["run"], predictions=table, cohort=scored_cohort["manifest"], n_boot=10
    )
    assert view.cohort is not None and view.case_view(view.case_ids[0]).manifest is not None


def test_cli_keeps_the_scored_cohorts_reviews_apart(
    review_run, scored_cohort, tmp_path, monkeypatch
):
    from clinfuse.review import cli as review_cli
    from tests.app.test_app_cli import _cli

    table = _copy_scored(scored_cohort, tmp_path)
    monkeypatch.setenv("CLINFUSE_REVIEWER_PASSWORD", "a long password")
    runner = CliRunner()
    out = runner.invoke(
        _cli(), ["app", review_run["run"], "--predictions", str(table), "--add-reviewer", "dana"]
    )
    assert out.exit_code == 0, out.output + str(out.exception)
    db = default_db_path(review_run["run"], table)
    assert db == tmp_path / "new.reviews.sqlite"
    assert [r["username"] for r in ReviewStore(db).reviewers()] == ["dana"]
    calls = []
    monkeypatch.setattr(review_cli.subprocess, "call", lambda cmd, env: calls.append(env) or 0)
    out = runner.invoke(_cli(), ["app", review_run["run"], "--predictions", str(table)])
    assert out.exit_code == 0, out.output + str(out.exception)
    (env,) = calls
    assert env["CLINFUSE_APP_PREDICTIONS"] == str(table.resolve())
    assert env["CLINFUSE_APP_DB"] == str(db.resolve())
    assert "Cases scored by `clinfuse predict`" in out.output


def test_pages_on_a_scored_cohort(review_run, scored_cohort, tmp_path, monkeypatch, password):
    table = _copy_scored(scored_cohort, tmp_path)
    db = tmp_path / "r.sqlite"
    at = _logged_in(review_run, table, tmp_path, monkeypatch, password)
    assert at.title[0].value == "Worklist"
    assert at.metric[0].value == "24"
    assert any("Cases scored by `clinfuse predict`" in i.value for i in at.info)
    cid = str(pd.read_csv(table, dtype={"case_id": str})["case_id"].iloc[0])
    at.session_state["case_id"] = cid
    at.switch_page("pages/case_review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="case_select").value == cid
    assert any("No explanation cached" in i.value for i in at.info)
    at.radio(key="decision").set_value("agree")
    at.button(key="submit_review").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (saved,) = ReviewStore(db).reviews(case_id=cid)
    assert saved.model_version == run_fingerprint(review_run["run"])
    assert saved.risk_shown == pytest.approx(float(pd.read_csv(table)["p_fusion"].iloc[0]))
    # the synthetic scored cohort has outcomes: the cohort page draws them
    at.switch_page("pages/cohort.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("scored cases with an outcome (24 of 24)" in str(c.value) for c in at.caption)


def test_cohort_results_of_scored_cases_with_and_without_outcomes(
    review_run, scored_cohort, tmp_path, monkeypatch, password
):
    from sklearn.metrics import roc_auc_score

    from clinfuse.io.tabular import TabularEncoder
    from clinfuse.review.cohort import load_cohort_results

    table = _copy_scored(scored_cohort, tmp_path)
    frame = pd.read_csv(table, dtype={"case_id": str})
    view = open_run_view(review_run["run"], predictions=table, n_boot=5)
    res = load_cohort_results(view)
    assert res.aurocs["fusion"] == pytest.approx(roc_auc_score(frame["label"], frame["p_fusion"]))
    cm = view.scored_case_mix()
    assert cm["evaluated"]["outcome_rate"] == pytest.approx(frame["label"].mean())
    assert "outcome" in cm["membership"]["coefficients"]
    assert res.case_mix is not None and "Membership model" in (res.case_mix_text or "")
    # the standardised mean difference of a lab against the training split, by hand
    meta = json.loads((Path(review_run["run"]) / "model" / "model.json").read_text())
    enc = TabularEncoder.from_dict(meta["tabular"])
    manifest = pd.read_csv(scored_cohort["manifest"], dtype={"case_id": str}).set_index("case_id")
    wbc = manifest.loc[frame["case_id"], "wbc"].dropna().to_numpy(float)
    pooled = np.sqrt((enc.stds_["wbc"] ** 2 + wbc.std(ddof=1) ** 2) / 2)
    row = next(r for r in cm["tabular"] if r["column"] == "wbc")
    assert row["smd"] == pytest.approx((wbc.mean() - enc.means_["wbc"]) / pooled)
    # new patients whose outcomes are not known yet: no curves, but the case mix (outcome
    # left out of the membership model) on the cohort page
    frame.drop(columns=["label"]).to_csv(table, index=False)
    view = open_run_view(review_run["run"], predictions=table, n_boot=5)
    with pytest.raises(ConfigError, match="no outcomes of both kinds") as e:
        load_cohort_results(view)
    assert "clinfuse evaluate" in str(e.value)
    cm = view.scored_case_mix()
    assert cm["evaluated"]["outcome_rate"] is None
    assert "outcome" not in cm["membership"]["coefficients"]
    assert cm["interpretation"].startswith(
        f"Membership model c = {cm['membership']['c_statistic']:.2f} (outcomes not known yet"
    )
    at = _logged_in(review_run, table, tmp_path, monkeypatch, password)
    at.switch_page("pages/cohort.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.subheader] == ["Case mix vs development data"]
    assert len(at.dataframe) == 1 and "outcomes not known yet" in at.markdown[-1].value


def _app_env(monkeypatch, run, db, table) -> None:
    """The app's settings for the scored ``table`` of ``run``, reviews in ``db``."""
    for key, value in {
        "CLINFUSE_APP_RUN": str(run),
        "CLINFUSE_APP_DB": str(db),
        "CLINFUSE_APP_PREDICTIONS": str(table),
    }.items():
        monkeypatch.setenv(key, value)
    for key in (
        "CLINFUSE_APP_COHORT",
        "CLINFUSE_APP_EVALUATION",
        "CLINFUSE_APP_EXPLANATIONS",
        "CLINFUSE_APP_MONITORING",
    ):
        monkeypatch.delenv(key, raising=False)


def _logged_in(
    review_run,
    table,
    tmp_path,
    monkeypatch,
    password,
    evaluation: Path | None = None,
    monitoring: Path | None = None,
) -> AppTest:
    """The app on the scored ``table`` (and ``evaluation``, ``monitoring``), alice logged in."""
    from clinfuse.review.auth import add_reviewer

    db = tmp_path / "r.sqlite"
    add_reviewer(ReviewStore(db), "alice", password)
    _app_env(monkeypatch, review_run["run"], db, table)
    if evaluation is not None:
        monkeypatch.setenv("CLINFUSE_APP_EVALUATION", str(evaluation))
    if monitoring is not None:
        monkeypatch.setenv("CLINFUSE_APP_MONITORING", str(monitoring))
    at = AppTest.from_file(str(ENTRY), default_timeout=120).run()
    at.text_input(key="login_username").input("alice")
    at.text_input(key="login_password").input(password)
    at.button(key="login_submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_evaluation_of_another_model_is_refused(review_run, scored_cohort, tmp_path):
    evaluation = tmp_path / "evaluation"
    shutil.copytree(Path(review_run["evaluation"]), evaluation)
    # the run's own evaluation is accepted for its scored cohort too
    view = open_run_view(
        review_run["run"], predictions=scored_cohort["predictions"], evaluation=evaluation
    )
    assert view.evaluation == evaluation
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["run"]["model_sha256"] = "0" * 64
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ConfigError, match="evaluation is of another model") as e:
        open_run_view(review_run["run"], evaluation=evaluation)
    assert "clinfuse evaluate" in str(e.value)


def test_rescoring_drops_exclusions_that_no_longer_apply(review_run, scored_cohort, tmp_path):
    """Files beside the table that an earlier scoring left and this one does not write:
    its exclusions, a fold ensemble's per-model outputs."""
    from clinfuse.cli import app

    table = tmp_path / "again.csv"
    stale = tmp_path / "again.excluded.csv"
    stale.write_text("case_id,field,severity,path,message\ncase0001,image,error,x,unreadable\n")
    models = tmp_path / "again.fold_models.csv"
    models.write_text("case_id,model,logit_fusion\ncase0001,1,0.3\n")
    args = ["predict", review_run["run"], scored_cohort["manifest"], "--out", str(table)]
    result = CliRunner().invoke(app, [*args, "--workers", "0"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert not stale.exists() and not models.exists()
    info = read_provenance(table)
    assert info is not None and info["n_excluded"] == 0 and info["n_cases"] == 24
    assert "fold_models" not in info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.csv", "again.provenance.json"]


def test_a_scored_cohorts_database_takes_the_runs_reviewers(review_run, scored_cohort, tmp_path):
    """--copy-reviewers-from: accounts arrive with their password hashes (the same password
    logs in), deactivations kept, accounts already there left alone; each copy audited."""
    from clinfuse.review.auth import add_reviewer, authenticate
    from tests.app.test_app_cli import _cli

    source = ReviewStore(tmp_path / "run_reviews.sqlite")
    add_reviewer(source, "alice", "alice's password")
    add_reviewer(source, "bob", "bob's password")
    source.set_active("bob", False, actor="admin")
    source.ensure_oidc_reviewer("carol@example.org", "Carol")
    table = _copy_scored(scored_cohort, tmp_path)
    db = default_db_path(review_run["run"], table)
    add_reviewer(ReviewStore(db), "alice", "another password")  # already here: kept
    base = ["app", review_run["run"], "--predictions", str(table)]
    out = CliRunner().invoke(_cli(), [*base, "--copy-reviewers-from", str(source.path)])
    assert out.exit_code == 0, out.output + str(out.exception)
    assert "copied 2 reviewer accounts" in out.output and "left as they are: alice" in out.output
    store = ReviewStore(db)
    accounts = {r["username"]: r for r in store.reviewers()}
    assert set(accounts) == {"alice", "bob", "carol@example.org"}
    assert authenticate(store, "alice", "another password") == "alice"
    assert authenticate(store, "alice", "alice's password") is None
    assert not accounts["bob"]["active"] and authenticate(store, "bob", "bob's password") is None
    store.set_active("bob", True, actor="admin")
    assert authenticate(store, "bob", "bob's password") == "bob"  # the hash came along
    assert accounts["carol@example.org"]["auth"] == "oidc"
    copied = [e for e in store.audit_log() if e["action"] == "reviewer_copied"]
    assert sorted(e["detail"]["username"] for e in copied) == ["bob", "carol@example.org"]
    assert all(e["detail"]["source"] == str(source.path.resolve()) for e in copied)
    assert all(
        "password" not in json.dumps(e["detail"]).replace('"auth": "password"', "") for e in copied
    )
    # refusals: a missing file (not created), this database itself, a foreign SQLite file
    missing = tmp_path / "nowhere.sqlite"
    with pytest.raises(ConfigError, match="no review database there"):
        store.copy_reviewers(missing)
    assert not missing.exists()
    with pytest.raises(ConfigError, match="into itself"):
        store.copy_reviewers(db)
    import sqlite3

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE patients (name TEXT)")
    with pytest.raises(ConfigError, match="not a clinfuse review store"):
        store.copy_reviewers(foreign)
    empty, text = tmp_path / "empty.sqlite", tmp_path / "notes.txt"
    empty.write_bytes(b"")
    text.write_text("not a database\n" * 200)
    for bad in (empty, text):  # refused, and read without writing to it
        with pytest.raises(ConfigError, match="not a clinfuse review store"):
            store.copy_reviewers(bad)
    assert empty.read_bytes() == b"" and not tmp_path.joinpath("empty.sqlite-wal").exists()


def test_a_new_scored_database_suggests_copying_the_runs_reviewers(
    review_run, scored_cohort, tmp_path, monkeypatch
):
    """With no account in the scored cohort's database and some in the run's, the command
    line and the login page both give the copy command."""
    from clinfuse.review import cli as review_cli
    from clinfuse.review.auth import add_reviewer, first_account_commands
    from tests.app.test_app_cli import _cli

    run = tmp_path / "run"  # the shared run's files, under a folder whose database is ours
    run.mkdir()
    for item in Path(review_run["run"]).iterdir():
        (run / item.name).symlink_to(item)
    table = _copy_scored(scored_cohort, tmp_path)
    view = open_run_view(run, predictions=table)
    db = default_db_path(run, table)
    assert first_account_commands(view, db) == [f"{view.app_command} --add-reviewer YOUR_NAME"]
    run_db = default_db_path(run)
    add_reviewer(ReviewStore(run_db), "alice", "alice's password")
    _, copy = first_account_commands(view, db)
    assert copy == f"{view.app_command} --copy-reviewers-from {run_db}"
    own = open_run_view(run)  # the run's own worklist: nothing to copy from
    assert first_account_commands(own, run_db) == [f"{own.app_command} --add-reviewer YOUR_NAME"]
    monkeypatch.setattr(review_cli.subprocess, "call", lambda cmd, env: 0)
    out = CliRunner().invoke(_cli(), ["app", str(run), "--predictions", str(table)])
    assert out.exit_code == 0, out.output + str(out.exception)
    assert f"--copy-reviewers-from {run_db}`" in out.output
    _app_env(monkeypatch, run, db, table)
    at = AppTest.from_file(str(ENTRY), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("--copy-reviewers-from" in i.value for i in at.info)


def test_conformal_sets_of_a_scored_cohort_in_worklist_and_case_page(
    review_run, scored_cohort, tmp_path, monkeypatch, password
):
    """``clinfuse predict --conformal EVAL``: the app shows each case's set, filters the
    worklist by it and refuses a damaged record."""
    from clinfuse.cli import app as cli_app
    from clinfuse.evaluation.conformal import conformal_from_evaluation
    from clinfuse.evaluation.evaluate import evaluate_run
    from clinfuse.review.worklist import filter_worklist

    held_out = tmp_path / "ev_test"  # the run's test split: cases it did not train on
    evaluate_run(review_run["run"], review_run["manifest"], held_out, split="test", n_boot=0)
    table = tmp_path / "conf.csv"
    result = CliRunner().invoke(
        cli_app,
        [
            "predict",
            review_run["run"],
            scored_cohort["manifest"],
            "--out",
            str(table),
            "--workers",
            "0",
            "--conformal",
            str(held_out),
            "--alpha",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    sets = conformal_from_evaluation(held_out, review_run["run"], alpha=0.2)
    view = open_run_view(review_run["run"], predictions=table, n_boot=5)
    assert view.conformal == sets
    work = view.worklist()
    expected = sets.predict(pd.read_csv(table)["p_fusion"])
    assert list(work["conformal_set"]) == list(expected)
    kept = filter_worklist(work, conformal_sets=["uncertain"])
    assert (kept["conformal_set"] == "uncertain").all() and len(kept) == (
        expected == "uncertain"
    ).sum()
    at = _logged_in(review_run, table, tmp_path, monkeypatch, password)
    assert at.multiselect(key="filter_conformal").value == [
        "positive",
        "uncertain",
        "negative",
        "empty",
    ]
    cid = str(work["case_id"].iloc[0])
    at.session_state["case_id"] = cid
    at.switch_page("pages/case_review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"80 % conformal set: {expected[0]}" in m.value for m in at.markdown)
    # a damaged record is refused by name
    info = json.loads(provenance_path(table).read_text())
    info["conformal"]["alpha"] = "ten percent"
    provenance_path(table).write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="not a conformal-set description") as e:
        open_run_view(review_run["run"], predictions=table, n_boot=5)
    assert "--conformal" in str(e.value)


def test_cohort_page_shows_an_evaluations_periods_and_conformal_coverage(
    review_run, scored_cohort, tmp_path, monkeypatch, password
):
    """An evaluation with --time-column and --conformal: the cohort page's two tables."""
    from clinfuse.evaluation.conformal import conformal_from_evaluation
    from clinfuse.evaluation.evaluate import evaluate_run
    from clinfuse.review.cohort import load_cohort_results

    frame = pd.read_csv(scored_cohort["manifest"], dtype=str, keep_default_na=False)
    days = np.random.default_rng(1).integers(0, 500, len(frame))
    frame.insert(3, "encounter_date", [str(np.datetime64("2023-01-01") + int(d)) for d in days])
    dated = Path(scored_cohort["manifest"]).with_name("dated_for_cohort_page.csv")
    frame.to_csv(dated, index=False)
    held_out = tmp_path / "ev_test"
    evaluate_run(review_run["run"], review_run["manifest"], held_out, split="test", n_boot=0)
    sets = conformal_from_evaluation(held_out, review_run["run"], alpha=0.2)
    evaluation = tmp_path / "ev_dated"
    evaluate_run(
        review_run["run"],
        dated,
        evaluation,
        n_boot=0,
        min_group_size=3,
        min_group_events=1,
        conformal=sets,
        time_column="encounter_date",
        period="year",
    )
    table = _copy_scored(scored_cohort, tmp_path)
    view = open_run_view(review_run["run"], predictions=table, evaluation=evaluation, n_boot=5)
    res = load_cohort_results(view)
    assert list(res.over_time["year"]) == ["2023", "2024"]
    assert "log odds change by" in (res.over_time_text or "")
    assert list(res.conformal["cases"]) == ["events", "non-events", "all"]
    assert (res.subgroups_text or "").startswith("Do the groups differ more than chance allows?")
    assert (res.conformal_text or "").startswith("80 % conformal sets (per outcome)")
    at = _logged_in(review_run, table, tmp_path, monkeypatch, password, evaluation=evaluation)
    at.switch_page("pages/cohort.py").run()
    assert not at.exception, [e.value for e in at.exception]
    heads = [h.value for h in at.subheader]
    assert "Performance over time" in heads and "Conformal prediction sets" in heads


def test_cohort_page_shows_a_monitoring_of_the_scored_table(
    review_run, scored_cohort, tmp_path, monkeypatch, password
):
    from clinfuse.evaluation.monitor import monitor_predictions
    from clinfuse.review.cohort import monitoring_site_table, monitoring_table

    frame = pd.read_csv(scored_cohort["manifest"], dtype=str, keep_default_na=False)
    frame.insert(3, "encounter_date", ["2024-01-10"] * 12 + ["2024-07-10"] * 12)
    frame["label"] = ""  # new patients: no outcome known yet
    dated = Path(scored_cohort["manifest"]).with_name("dated_for_monitoring.csv")
    frame.to_csv(dated, index=False)
    table = tmp_path / "p.csv"
    from clinfuse.cli import app as cli

    result = CliRunner().invoke(
        cli, ["predict", review_run["run"], str(dated), "--out", str(table), "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    watch = tmp_path / "monitor"
    res = monitor_predictions(
        review_run["run"],
        table,
        watch,
        time_column="encounter_date",
        period="quarter",
        min_size=5,
    )
    view = open_run_view(review_run["run"], predictions=table, monitoring=watch, n_boot=5)
    rows, text = monitoring_table(view)
    assert list(rows["quarter"]) == ["2024Q1", "2024Q3"]  # the empty quarter is not compared
    assert list(rows["cases"]) == [12, 12]
    first = res.summary["periods"][0]
    assert rows["PSI fused"].iloc[0] == pytest.approx(round(first["psi_fusion"]["value"], 2))
    assert f"{res.summary['n_flagged_periods']} of 2 compared quarters flagged" in text
    sites, sites_text = monitoring_site_table(view)
    by_site = res.summary["by_site"]
    assert sites is not None and sites_text is not None and len(sites) >= 2
    assert list(sites["site"]) == [e["site"] for e in by_site["sites"]]
    assert list(sites["flagged"]) == [e["n_flagged_periods"] for e in by_site["sites"]]
    assert f"{by_site['n_flagged_periods']} site quarters flagged" in sites_text
    at = _logged_in(review_run, table, tmp_path, monkeypatch, password, monitoring=watch)
    at.switch_page("pages/cohort.py").run()
    assert not at.exception, [e.value for e in at.exception]
    heads = [h.value for h in at.subheader]
    assert "Monitoring by period" in heads and "Monitoring by site" in heads
    # refusals
    with pytest.raises(ConfigError, match="goes with --predictions"):
        open_run_view(review_run["run"], monitoring=watch, n_boot=5)
    other = _copy_scored(scored_cohort, tmp_path)
    with pytest.raises(ConfigError, match="read another predictions table"):
        open_run_view(review_run["run"], predictions=other, monitoring=watch, n_boot=5)
    with pytest.raises(
        ConfigError, match=r"cannot read the monitoring\.json of a monitoring folder"
    ):
        open_run_view(review_run["run"], predictions=table, monitoring=tmp_path, n_boot=5)


def test_a_run_assembled_from_a_federation_is_reviewed_on_a_sites_scored_cases(
    review_run, scored_cohort, tmp_path, monkeypatch, password
):
    """A run folder `clinfuse flower-assemble` wrote holds the model but no case (its
    run.json: federated, not evaluated). The app asks for the site's scored cases, shows no
    band (the validation logits stayed at the sites) and says so on the case page; the
    above/below verdict is the risk's own."""
    from clinfuse.scored import provenance_path

    run = tmp_path / "assembled"
    run.mkdir()
    src = Path(review_run["run"])
    shutil.copy(src / "config.yaml", run / "config.yaml")
    shutil.copytree(src / "model", run / "model")
    (run / "run.json").write_text(
        json.dumps({"complete": True, "federated": True, "evaluated": False})
    )
    with pytest.raises(ConfigError, match="holds no case to review") as e:
        open_run_view(run)
    assert "clinfuse predict" in str(e.value)
    table = tmp_path / "scored.csv"
    from clinfuse.cli import app as cli

    result = CliRunner().invoke(
        cli,
        ["predict", str(run), scored_cohort["manifest"], "--out", str(table), "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    assert provenance_path(table).is_file()
    view = open_run_view(run, predictions=table, n_boot=5)
    assert view.assembled and view.band_note.startswith("No band")
    f = view.predictions
    assert f["risk_low"].isna().all() and f["risk_high"].isna().all()
    t = view.threshold
    want = np.where(f["p_fusion"] >= t, "above", "below")
    assert (f["vs_threshold"].to_numpy() == want).all()
    at = _logged_in({"run": str(run)}, table, tmp_path, monkeypatch, password)
    assert at.title[0].value == "Worklist" and at.metric[0].value == "24"
    at.session_state["case_id"] = str(f["case_id"].iloc[0])
    at.switch_page("pages/case_review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.value == "– – –" for m in at.metric)
    assert any(
        str(c.value).startswith("No band: the model was trained across sites") for c in at.caption
    )
    at.radio(key="decision").set_value("agree")
    at.button(key="submit_review").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (saved,) = ReviewStore(tmp_path / "r.sqlite").reviews(case_id=str(f["case_id"].iloc[0]))
    assert saved.risk_low is None and saved.risk_high is None
    assert saved.risk_shown == pytest.approx(float(f["p_fusion"].iloc[0]))
    at.button(key="compute_explanation").click().run()  # from the scored cohort's files
    assert not at.exception, [e.value for e in at.exception]
    assert not any("No explanation cached" in i.value for i in at.info)
    at.switch_page("pages/cohort.py").run()  # the scored cases' outcomes: curves
    assert not at.exception, [e.value for e in at.exception]
    assert any("scored cases with an outcome (24 of 24)" in str(c.value) for c in at.caption)
