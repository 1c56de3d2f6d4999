"""``clinfuse tune``: the search space, the trials' figures against scikit-learn, the choice,
nested cross-validation that keeps each outer fold out of its own search, and resuming."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from clinfuse.errors import ConfigError
from tests.conftest import tiny_config

SPACE = {"params": {"training.lr": [1e-2, 1e-3], "encoders.tabular.hidden": [[8]]}}


def _config():
    cfg = tiny_config(epochs=1)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": ["tabular"]})})


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        ({"params": {}}, "params", "empty"),
        ({"params": {"training.lr": [0.1]}, "serach": "grid"}, "serach", "unknown key"),
        ({"params": {"training.lr": []}}, "params.training.lr", "no values"),
        ({"params": {"training.lr": 0.1}}, "params.training.lr", "list of values"),
        (
            {"params": {"training.lr": {"low": 1e-4, "high": 1e-2}}},
            "params.training.lr",
            "grid search needs a list",
        ),
        (
            {
                "search": "random",
                "params": {"training.lr": {"low": 1e-2, "high": 1e-4}},
                "trials": 2,
            },
            "params.training.lr",
            "below high",
        ),
        (
            {
                "search": "random",
                "trials": 2,
                "params": {"training.lr": {"low": 0, "high": 1, "log": True}},
            },
            "params.training.lr",
            "low > 0",
        ),
        ({"search": "random", "params": {"training.lr": [0.1]}}, "trials", "needs trials"),
        ({"trials": 3, "params": {"training.lr": [0.1]}}, "trials", "random search"),
        ({"params": {"data.target": ["death"]}}, "params.data.target", "outcome"),
        ({"params": {"training.device": ["cuda"]}}, "params.training.device", "hardware"),
        (
            {"params": {f"fusion.p{i}": list(range(10)) for i in range(3)}},
            "params",
            "1000 combinations",
        ),
    ],
)
def test_a_bad_search_space_is_refused_with_the_parameter_named(space, field, words) -> None:
    from clinfuse.evaluation.tune import read_space

    with pytest.raises(ConfigError, match=words) as err:
        read_space(space)
    assert err.value.field == field


def test_candidates_of_a_grid_and_of_a_random_search() -> None:
    from clinfuse.evaluation.tune import read_space

    grid = read_space({"params": {"a.x": [1, 2, 3], "b.y": ["p", "q"]}}).candidates()
    assert grid == [{"a.x": x, "b.y": y} for x in (1, 2, 3) for y in ("p", "q")]

    spec = {
        "search": "random",
        "trials": 400,
        "seed": 7,
        "params": {
            "lr": {"low": 1e-5, "high": 1e-1, "log": True},
            "width": {"low": 4, "high": 64, "integer": True},
            "drop": {"low": 0.0, "high": 0.5},
        },
    }
    draws = read_space(spec).candidates()
    assert draws == read_space(spec).candidates()  # the seed fixes them
    lr = np.array([d["lr"] for d in draws])
    width = np.array([d["width"] for d in draws])
    drop = np.array([d["drop"] for d in draws])
    assert lr.min() >= 1e-5 and lr.max() <= 1e-1
    # log-uniform: each decade gets about a quarter of the draws
    per_decade = np.histogram(np.log10(lr), bins=[-5, -4, -3, -2, -1])[0]
    assert per_decade.min() > 60
    assert set(width.tolist()) <= set(range(4, 65)) and width.dtype.kind == "i"
    assert {4, 64} <= set(width.tolist())  # both bounds can be drawn
    assert drop.min() >= 0.0 and drop.max() <= 0.5
    # repeated draws of a small list space are tried once
    few = read_space({"search": "random", "trials": 50, "params": {"a": [1, 2]}}).candidates()
    assert sorted(c["a"] for c in few) == [1, 2]


def test_a_candidate_that_is_not_a_valid_config_is_refused_before_any_training(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.evaluation.tune import candidate_config, tune

    base = _config()
    cfg = candidate_config(base, {"training.lr": 0.05, "encoders.tabular.hidden": [3, 2]})
    assert cfg.training.lr == 0.05 and cfg.encoders["tabular"]["hidden"] == [3, 2]
    assert cfg.training.epochs == base.training.epochs  # the rest is the base config
    cases = [
        ({"training.lrate": [0.1]}, "params.training.lrate"),
        ({"training.lr": [0.1, -1.0]}, "params.training.lr"),
        ({"encoders.tabular.hiden": [[4]]}, "params.encoders.tabular.hiden"),
        ({"training.lr.value": [0.1]}, "params.training.lr.value"),
    ]
    for params, field in cases:
        with pytest.raises(ConfigError) as err:
            tune(tiny_cohort, tmp_path / "t", {"params": params}, base, folds=2)
        assert err.value.field == field, params
        assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()
    with pytest.raises(ConfigError, match="metric"):
        tune(tiny_cohort, tmp_path / "t", SPACE, base, metric="accuracy")
    # the same dotted path through a value is refused for the CLI's overrides too
    from clinfuse.config import load_config

    with pytest.raises(ConfigError, match="is a value, not a section") as err:
        load_config(None, {"training.lr": 0.1, "training.lr.value": 0.1})
    assert err.value.field == "training.lr.value"


@pytest.fixture(scope="module")
def tuned(tiny_cohort: Path, tmp_path_factory) -> Path:
    """A 2-trial search with 2-fold trials and a 2-fold nested cross-validation, via the CLI."""
    import yaml
    from typer.testing import CliRunner

    from clinfuse.cli import app

    root = tmp_path_factory.mktemp("tune")
    _config().save(root / "config.yaml")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE), encoding="utf-8")
    res = CliRunner().invoke(
        app,
        [
            "tune",
            str(tiny_cohort),
            "--space",
            str(root / "space.yaml"),
            "--config",
            str(root / "config.yaml"),
            "--out",
            str(root / "tune"),
            "--folds",
            "2",
            "--outer",
            "2",
            "--n-boot",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "chosen: trial" in res.output and "nested 2-fold estimate" in res.output
    assert "clinfuse train" in res.output and "best_config.yaml" in res.output
    return root / "tune"


def _predictions(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "evaluation" / "predictions.csv", dtype={"case_id": str})


def test_the_folder_is_complete_without_fold_models(tuned: Path) -> None:
    assert not tuned.with_name("tune.partial").exists()
    assert not list(tuned.rglob("*.partial")) and not list(tuned.rglob("folds"))
    assert not list(tuned.rglob("*.safetensors"))  # no model weights kept
    names = ("tuning.json", "trials.csv", "best_config.yaml", "config.yaml", "space.yaml")
    for name in (*names, "figures/trials.png", "figures/trials.svg"):
        assert (tuned / name).is_file(), name
    summary = json.loads((tuned / "tuning.json").read_text())
    assert summary["schema"] == "clinfuse.tuning.v1" and summary["n_trials"] == 2
    for trial in summary["trials"]:
        cv = json.loads((tuned / trial["path"] / "crossval.json").read_text())
        assert cv["fold_models_kept"] is False and cv["folds"] == 2
        assert (tuned / trial["path"] / "evaluation" / "report.html").is_file()


def test_trial_figures_match_scikit_learn_and_the_best_is_chosen(
    tuned: Path, tiny_cohort: Path
) -> None:
    from clinfuse.config import load_config
    from clinfuse.evaluation.tune import candidate_config

    summary = json.loads((tuned / "tuning.json").read_text())
    table = pd.read_csv(tuned / "trials.csv")
    aucs, per_fold = [], []
    for trial, row in zip(summary["trials"], table.itertuples(), strict=True):
        pred = _predictions(tuned / trial["path"])
        assert len(pred) == pd.read_csv(tiny_cohort).shape[0]  # every case held out once
        auc = roc_auc_score(pred["label"], pred["p_fusion"])
        assert trial["auroc"] == pytest.approx(auc, abs=1e-12)
        assert row.auroc == pytest.approx(auc, abs=1e-12)
        assert trial["log_loss"] == pytest.approx(log_loss(pred["label"], pred["p_fusion"]))
        assert trial["brier"] == pytest.approx(brier_score_loss(pred["label"], pred["p_fusion"]))
        folds = [
            roc_auc_score(g["label"], g["p_fusion"]) for _, g in pred.groupby("fold", sort=True)
        ]
        assert trial["per_fold"] == pytest.approx(folds, abs=1e-12)
        aucs.append(auc)
        per_fold.append(np.array(folds))
        # every trial dealt the same patients to the same folds
        assert pd.read_csv(tuned / trial["path"] / "assignment.csv").equals(
            pd.read_csv(tuned / summary["trials"][0]["path"] / "assignment.csv")
        )
    best = int(np.argmax(aucs))
    assert summary["best"]["trial"] == best + 1
    assert table["chosen"].tolist() == [i == best for i in range(len(aucs))]
    for i, trial in enumerate(summary["trials"]):
        d = per_fold[i] - per_fold[best]
        assert trial["diff_vs_best"] == pytest.approx(aucs[i] - aucs[best], abs=1e-12)
        assert trial["fold_diff_mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert trial["fold_diff_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), abs=1e-12)
    chosen = load_config(tuned / "best_config.yaml")
    expected = candidate_config(load_config(tuned / "config.yaml"), summary["best"]["values"])
    assert chosen.model_dump() == expected.model_dump()


def test_nested_cross_validation_keeps_each_outer_fold_out_of_its_search(tuned: Path) -> None:
    summary = json.loads((tuned / "tuning.json").read_text())
    nested = summary["nested"]
    outer = pd.read_csv(tuned / "nested" / "assignment.csv", dtype={"case_id": str})
    cv = json.loads((tuned / "nested" / "crossval.json").read_text())
    assert cv["fold_configs"] == "chosen per fold"
    report = (tuned / "nested" / "evaluation" / "report.html").read_text(encoding="utf-8")
    assert "Nested cross-validation" in report
    for choice in nested["choices"]:
        k = choice["fold"]
        held = set(outer.loc[outer["fold"] == k, "case_id"])
        search = tuned / "nested_search" / f"outer_{k}"
        inner_aucs = []
        for i in range(1, summary["n_trials"] + 1):
            trial = search / f"trial_{i:03d}"
            inner = pd.read_csv(trial / "assignment.csv", dtype={"case_id": str})
            assert set(inner["case_id"]) == set(outer["case_id"]) - held  # never the outer fold
            pred = _predictions(trial)
            inner_aucs.append(roc_auc_score(pred["label"], pred["p_fusion"]))
        assert choice["trial"] == int(np.argmax(inner_aucs)) + 1
        assert choice["inner_auroc"] == pytest.approx(max(inner_aucs), abs=1e-12)
        chosen_cv = json.loads(
            (search / f"trial_{choice['trial']:03d}" / "crossval.json").read_text()
        )
        # the outer fold's model was trained with the config its own search chose
        assert cv["fold_models"][k - 1]["config_sha256"] == chosen_cv["config_sha256"]
    pred = _predictions(tuned / "nested")
    assert pred["case_id"].is_unique and set(pred["case_id"]) == set(outer["case_id"])
    auc = roc_auc_score(pred["label"], pred["p_fusion"])
    assert nested["pooled"] == pytest.approx(auc, abs=1e-12)
    assert nested["auroc"]["value"] == pytest.approx(auc, abs=1e-12)
    assert nested["optimism"] == pytest.approx(summary["best"]["auroc"] - auc, abs=1e-12)


def test_losses_choose_the_lowest(tmp_path: Path) -> None:
    from clinfuse.evaluation.tune import trial_figures

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 200), 0.01, 0.99)
    frame = pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(200)],
            "fold": np.arange(200) % 4 + 1,
            "label": y,
            "p_fusion": p,
        }
    )
    for metric, ref in (("log_loss", log_loss), ("brier", brier_score_loss)):
        figures = trial_figures(frame, metric)
        assert figures["pooled"] == pytest.approx(ref(y, p), abs=1e-12)
        for k, g in frame.groupby("fold"):
            assert figures["per_fold"][k] == pytest.approx(
                ref(g["label"], g["p_fusion"]), abs=1e-12
            )
    part = trial_figures(frame, "auroc", cases=[f"c{i}" for i in range(100)])
    assert part["n_cases"] == 100
    assert part["pooled"] == pytest.approx(roc_auc_score(y[:100], p[:100]), abs=1e-12)


class _Stop(Exception):
    pass


def test_an_interrupted_search_resumes_to_the_same_result(
    tuned: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.evaluation.tune import tune

    epochs = {"n": 0}

    def stop_in_the_nested_search(_record, _epoch) -> None:
        epochs["n"] += 1
        if epochs["n"] == 7:  # 4 epochs are the main search; this one is in outer fold 1
            raise _Stop

    out = tmp_path / "tune"
    with pytest.raises(_Stop):
        tune(
            tiny_cohort,
            out,
            SPACE,
            _config(),
            folds=2,
            outer=2,
            n_boot=0,
            on_epoch=stop_in_the_nested_search,
        )
    assert not out.exists() and (tmp_path / "tune.partial" / "trials" / "trial_002").is_dir()
    with pytest.raises(ConfigError, match="metric"):
        tune(
            tiny_cohort,
            out,
            SPACE,
            _config(),
            folds=2,
            outer=2,
            n_boot=0,
            metric="brier",
            resume=True,
        )
    result = tune(tiny_cohort, out, SPACE, folds=2, outer=2, n_boot=0, resume=True)
    expected = json.loads((tuned / "tuning.json").read_text())
    for key in ("trials", "best", "nested"):
        assert result.summary[key] == expected[key], key
    assert (out / "best_config.yaml").read_text() == (tuned / "best_config.yaml").read_text()


def test_a_trial_folder_is_not_a_fold_ensemble(tuned: Path) -> None:
    from clinfuse.ensemble import FoldEnsemble

    with pytest.raises(ConfigError, match="fold models") as err:
        FoldEnsemble.from_crossval(tuned / "trials" / "trial_001")
    assert "best_config.yaml" in (err.value.hint or "")


def test_a_search_decodes_each_file_once_for_all_its_trials() -> None:
    """``shared_decoding`` blocks inside one another (each trial's cross-validation inside the
    search) share the outer block's memory, and it ends with the outer block."""
    from clinfuse._parallel import _DECODED
    from clinfuse.data import _share, _shared, shared_decoding

    assert _DECODED.get() is None
    with shared_decoding():
        _share(("a.dcm", "image", "s"), np.zeros(2), {"n": 1})
        with shared_decoding():
            value, meta = _shared(("a.dcm", "image", "s"))
            assert value.tolist() == [0.0, 0.0] and meta == {"n": 1}
            _share(("b.dcm", "image", "s"), np.ones(2), {})
        assert _shared(("b.dcm", "image", "s")) is not None
    assert _DECODED.get() is None


def test_halving_rungs() -> None:
    from clinfuse.evaluation.tune import Halving

    assert Halving(3, 1).rungs(9, 9) == [(9, 1), (3, 3), (1, 9)]
    assert Halving(3, 2).rungs(27, 5) == [(27, 2), (9, 5)]  # the epochs run out first
    assert Halving(2, 1).rungs(4, 10) == [(4, 1), (2, 2), (1, 10)]  # one left: full epochs
    assert Halving(2, 1).rungs(5, 3) == [(5, 1), (3, 2), (2, 3)]


@pytest.mark.parametrize(
    ("halving", "field"),
    [
        ({"factor": 1}, "halving.factor"),
        ({"min_epochs": 0}, "halving.min_epochs"),
        ({"factor": 2, "rounds": 3}, "halving"),
        ("fast", "halving"),
    ],
)
def test_bad_halving_is_refused(halving, field) -> None:
    from clinfuse.evaluation.tune import read_space

    with pytest.raises(ConfigError) as err:
        read_space({"params": {"training.lr": [0.1, 0.01]}, "halving": halving})
    assert err.value.field == field


def test_successive_halving_keeps_the_best_of_each_rung(tiny_cohort: Path, tmp_path: Path) -> None:
    from clinfuse.config import load_config
    from clinfuse.evaluation.tune import read_space, tune

    space = {
        "params": {"training.lr": [3e-2, 1e-2, 3e-3, 1e-3]},
        "halving": {"factor": 2, "min_epochs": 1},
    }
    with pytest.raises(ConfigError) as err:
        tune(tiny_cohort, tmp_path / "x", space, tiny_config(epochs=1), folds=2)
    assert err.value.field == "halving.min_epochs"
    with pytest.raises(ConfigError, match=r"training\.epochs cannot be tuned"):
        read_space({**space, "params": {"training.epochs": [1, 2]}})

    base = _config().model_copy(deep=True)
    base.training.epochs = 3
    base.training.patience = 3
    res = tune(tiny_cohort, tmp_path / "halving", space, base, folds=2, n_boot=0)
    summary = res.summary
    rungs = summary["halving"]["rungs"]
    assert [(len(r["trials"]), r["epochs"]) for r in rungs] == [(4, 1), (2, 2), (1, 3)]
    # (4 × 1 + 2 × 2 + 1 × 3) epochs × 2 folds, against 4 × 3 × 2
    assert summary["halving"]["epochs_budgeted"] == 22
    assert summary["halving"]["epochs_without_halving"] == 24
    alive = [1, 2, 3, 4]
    for r in rungs:
        assert r["trials"] == alive
        aucs = {}
        for t in alive:
            folder = res.out / "trials" / f"rung_{r['rung']}" / f"trial_{t:03d}"
            assert load_config(folder / "config.yaml").training.epochs == r["epochs"]
            pred = _predictions(folder)
            aucs[t] = roc_auc_score(pred["label"], pred["p_fusion"])
        keep = max(1, -(-len(alive) // 2)) if r is not rungs[-1] else 0
        expected = sorted(sorted(alive, key=lambda t: (-aucs[t], t))[:keep])
        assert r["kept"] == expected
        for t in alive:  # each trial's row holds the last rung it reached
            row = next(x for x in summary["trials"] if x["trial"] == t)
            if t not in r["kept"]:
                assert row["rung"] == r["rung"] and row["epochs"] == r["epochs"]
                assert row["auroc"] == pytest.approx(aucs[t], abs=1e-12)
        if r is rungs[-1]:
            assert summary["best"]["trial"] == max(alive, key=lambda t: (aucs[t], -t))
        alive = r["kept"]
    assert res.best_config.training.epochs == 3  # the chosen config trains with full epochs
    assert res.trials["rung"].tolist() == [x["rung"] for x in summary["trials"]]


def test_a_cohort_the_first_trial_refuses_leaves_no_folder(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.errors import CohortError
    from clinfuse.evaluation.tune import tune

    out = tmp_path / "t"
    with pytest.raises(ConfigError, match="folds"):  # more folds than patients
        tune(tiny_cohort, out, SPACE, _config(), folds=1000)
    with pytest.raises(CohortError):
        tune(tmp_path / "missing.csv", out, SPACE, _config(), folds=2)
    assert not out.exists() and not (tmp_path / "t.partial").exists()


def test_a_missing_or_broken_space_file_is_named(tmp_path: Path) -> None:
    from clinfuse.evaluation.tune import read_space

    with pytest.raises(ConfigError, match="search space file not found") as err:
        read_space(tmp_path / "nope.yaml")
    assert err.value.path == str(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("params: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="search space is not valid YAML"):
        read_space(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- training.lr\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_space(listed)


def test_a_refused_nested_stage_keeps_the_scored_trials(tiny_cohort, tmp_path, monkeypatch):
    """The main trials drop their fold models once scored; a nested stage refused later (an
    outer fold without both outcomes) must still leave them for --resume."""
    import importlib

    from clinfuse.errors import CohortError

    tune_module = importlib.import_module("clinfuse.evaluation.tune")  # the module, not tune()

    def refuse(*_args, **_kwargs):
        raise CohortError("outer fold 1: its val part has one outcome class")

    monkeypatch.setattr(tune_module, "_nested", refuse)
    out = tmp_path / "tune"
    with pytest.raises(CohortError, match="one outcome class"):
        tune_module.tune(tiny_cohort, out, SPACE, _config(), folds=2, outer=2, n_boot=0)
    kept = tmp_path / "tune.partial" / "trials"
    assert (kept / "trial_001" / "crossval.json").exists()
    assert (kept / "trial_002" / "crossval.json").exists()
