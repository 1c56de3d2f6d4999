"""Site-local manifests: the plan from the sites' summaries, the sites' own splits, the
coordinator's run folder, each site's evaluation — checked against the pooled references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clinfuse.config import RunConfig
from tests.clinfuse.federated_support import InProcessQueries


def _config() -> RunConfig:
    from tests.conftest import tiny_config

    cfg = tiny_config(batch_size=4)
    return cfg.model_copy(
        update={"calibration": cfg.calibration.model_copy(update={"method": "platt"})}
    )


# -- the tabular encoder from the sites' sums ------------------------------------------
def _frames(seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (site, n) in enumerate([("a", 40), ("b", 7), ("c", 120)]):
        age = rng.normal(50 + 10 * i, 5 + i, n).round(1).astype(object)
        age[rng.random(n) < 0.2] = None
        crp = (rng.lognormal(1 + i, 1, n) * 1e3).astype(object)  # large values: m2 precision
        sex = rng.choice(["F", "M"] if i < 2 else ["F", "M", "X"], n).astype(object)
        sex[rng.random(n) < 0.1] = ""
        out[site] = pd.DataFrame({"age": age, "crp": crp, "sex": sex, "const": [3.0] * n})
    return out


def test_tabular_encoder_from_site_summaries_equals_the_pooled_fit() -> None:
    """Each site's count, mean and sum of squared deviations combine to the pooled fit's
    mean and (population) SD; categories are the union of the sites' levels."""
    from clinfuse.io.tabular import TabularEncoder

    columns = ["age", "crp", "sex", "const"]
    frames = _frames()
    pooled = TabularEncoder(columns).fit(pd.concat(frames.values(), ignore_index=True))
    summaries = {s: TabularEncoder(columns).summarize(f) for s, f in frames.items()}
    fed = TabularEncoder.from_summaries(columns, summaries)
    assert (
        fed.feature_names_
        == pooled.feature_names_
        == [
            "age",
            "crp",
            "sex=F",
            "sex=M",
            "sex=X",
            "const",
        ]
    )
    assert fed.kinds_ == pooled.kinds_ and fed.categories_ == pooled.categories_
    for col in ("age", "crp", "const"):
        assert fed.means_[col] == pytest.approx(pooled.means_[col], rel=1e-12)
        assert fed.stds_[col] == pytest.approx(pooled.stds_[col], rel=1e-12)
    assert fed.stds_["const"] == 1.0  # constant column: SD treated as 1, as fit does
    # what a site sends: counts and moments, the category names, no value
    assert summaries["b"]["age"]["kind"] == "numeric" and set(summaries["b"]["age"]) == {
        "kind",
        "n",
        "mean",
        "m2",
    }
    frame = pd.concat(frames.values(), ignore_index=True)
    values, mask = fed.transform(frame)
    ref_values, ref_mask = pooled.transform(frame)
    np.testing.assert_allclose(values, ref_values, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(mask, ref_mask)


def test_site_summaries_that_cannot_be_combined_are_named() -> None:
    from clinfuse.errors import CohortError
    from clinfuse.io.tabular import TabularEncoder

    frames = _frames()
    frames["b"] = frames["b"].assign(age=["old"] * len(frames["b"]))
    summaries = {s: TabularEncoder(["age"]).summarize(f) for s, f in frames.items()}
    with pytest.raises(CohortError, match=r"'age' holds numbers at a, c but text at b"):
        TabularEncoder.from_summaries(["age"], summaries)
    free_text = pd.DataFrame({"note": [f"patient {i}" for i in range(30)]})
    with pytest.raises(CohortError, match="looks like free text or an id"):
        TabularEncoder(["note"]).summarize(free_text)  # never leaves the site
    empty = {s: TabularEncoder(["age"]).summarize(f.assign(age=None)) for s, f in frames.items()}
    with pytest.raises(CohortError, match="no values in any site's training cases"):
        TabularEncoder.from_summaries(["age"], empty)


# -- a deployment with site-local manifests, every message answered in this process ----
@pytest.fixture(scope="module")
def site_manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 64-case tiny cohort (seed 3) written as one manifest per site, without the site
    and split columns: what each hospital would hold."""
    from clinfuse.synth import synthesize_cohort

    root = tmp_path_factory.mktemp("sites")
    manifest = synthesize_cohort(
        root / "cohort", n_cases=64, seed=3, image_size=32, signal_fs=50, signal_seconds=4.0
    )
    frame = pd.read_csv(manifest, dtype={"case_id": str, "patient_id": str})
    out = {}
    for site, part in frame.groupby("site"):
        path = manifest.parent / f"{site}.csv"
        part.drop(columns=[c for c in ("site", "split") if c in part]).to_csv(path, index=False)
        out[str(site)] = path
    return out


@pytest.fixture(scope="module")
def deployment(site_manifests: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """start → 2 rounds of FedAvg over the sites' tasks → finish (stage 2 from sums), with
    the outputs a ServerApp writes (RunRecorder), as in a real deployment."""
    from clinfuse.federated.flower_sites import site_run_config, start
    from clinfuse.federated.flower_stage2 import finish
    from clinfuse.federated.flower_task import make_site_task
    from clinfuse.federated.run import FederatedSettings
    from privacy.federated.simulation import simulate
    from privacy.federated.strategies import build_strategy
    from privacy.flower.config import merge_options
    from privacy.flower.results import RunRecorder

    cfg = _config()
    settings = FederatedSettings(rounds=2, baselines=False, stage2="aggregates")
    run_cfg = site_run_config(cfg, settings, n_sites=3)
    options = json.loads(json.dumps(run_cfg.task_options))  # as the run config carries it
    nodes = {s: {"site": s, "manifest": str(p)} for s, p in site_manifests.items()}
    queries = InProcessQueries(nodes, options)
    started = start(queries, options)
    queries.options = merge_options(options, started["task_options"])
    tasks = [make_site_task(nodes[s], queries.options) for s in sorted(nodes)]
    inits = [t.get_parameters() for t in tasks]  # before any training
    init = inits[0]
    strategy = build_strategy(settings.strategy, **settings.strategy_kwargs(cfg))
    history = simulate(tasks, strategy, settings.rounds, initial_parameters=init)
    finished = finish(queries, history.parameters, queries.options)
    out = tmp_path_factory.mktemp("flower") / "output"
    recorder = RunRecorder(out, run_cfg, run_id=1)
    recorder.save_start(started, {"function": run_cfg.start, "queries": 2})
    for r in history.rounds:
        recorder.start_round(r.server_round, len(r.sampled))
        recorder.record_fit(r.server_round, r.fit, [])
        recorder.finish_round(r.server_round, history.parameters, r.fit_aggregated, None)
        recorder.record_evaluate(r.server_round, r.evaluate, None, r.evaluate_aggregated)
    recorder.save_finish(finished, {"function": run_cfg.finish})
    recorder.finish("completed", history.parameters)
    return {
        "options": queries.options,
        "started": started,
        "tasks": tasks,
        "inits": inits,
        "history": history,
        "output": out,
        "settings": settings,
    }


def _pooled_manifest(site_manifests: dict[str, Path], plan: dict[str, Any]) -> Path:
    """All sites' rows in one manifest, with each site's own split (the reference), next
    to the sites' manifests (their file paths are relative to that folder)."""
    from clinfuse.federated.sites import site_cohort

    parts = []
    for site, path in sorted(site_manifests.items()):
        split = {r.case_id: r.split for r in site_cohort(path, _config(), site).rows}
        part = pd.read_csv(path, dtype={"case_id": str, "patient_id": str})
        parts.append(part.assign(site=site, split=part["case_id"].map(split)))
        assert plan["sites"][site]["test"]["n_cases"] == sum(v == "test" for v in split.values())
    out = next(iter(site_manifests.values())).parent / "pooled.csv"
    pd.concat(parts, ignore_index=True).to_csv(out, index=False)
    return out


def test_the_plan_is_made_from_counts_and_sums_only(deployment, site_manifests) -> None:
    """start.json: modalities, the encoder (equal to the fit on the pooled training rows of
    the sites' own splits), input shapes, counts per site; every site built the same
    seeded model from it."""
    from clinfuse.federated.sites import site_cohort, train_frame
    from clinfuse.io.tabular import TabularEncoder

    plan = deployment["started"]["plan"]
    assert plan["modalities"] == ["image", "note", "signal", "tabular"]
    assert plan["in_shapes"]["image_channels"] == 1 and plan["in_shapes"]["signal_leads"] >= 1
    assert set(plan["sites"]) == set(site_manifests)
    frames = [train_frame(site_cohort(p, _config(), s)) for s, p in site_manifests.items()]
    cfg = _config()
    pooled = TabularEncoder(cfg.data.tabular_columns).fit(pd.concat(frames, ignore_index=True))
    enc = TabularEncoder.from_dict(plan["tabular"])
    assert enc.feature_names_ == pooled.feature_names_
    for col, mean in pooled.means_.items():
        assert enc.means_[col] == pytest.approx(mean, rel=1e-12)
        assert enc.stds_[col] == pytest.approx(pooled.stds_[col], rel=1e-12)
    n = sum(v["n_cases"] for s in plan["sites"].values() for v in s.values())
    assert n == 64
    first, *others = deployment["inits"]
    for params in others:  # the same initial model at every site
        for a, b in zip(params, first, strict=True):
            np.testing.assert_array_equal(a, b)


def test_assembled_run_equals_the_pooled_simulation_and_each_site_evaluates_it(
    deployment, site_manifests, tmp_path: Path
) -> None:
    """The coordinator's run folder (flower-assemble, no case read) predicts what the
    in-process simulator trained on all sites' rows with the same splits predicts; a site's
    `clinfuse evaluate --split test` finds exactly its test cases."""
    import clinfuse
    from clinfuse.cohort import Cohort
    from clinfuse.evaluation.cli import evaluate
    from clinfuse.federated import federated_run
    from clinfuse.federated.cli import flower_assemble

    plan = deployment["started"]["plan"]
    pooled = _pooled_manifest(site_manifests, plan)
    ref = federated_run(pooled, tmp_path / "sim", _config(), deployment["settings"], n_boot=0)
    flower_assemble(deployment["output"], tmp_path / "fed")
    run = tmp_path / "fed"
    assert not (tmp_path / "fed.partial").exists()
    fed = json.loads((run / "federated.json").read_text())
    assert fed["deployment"] == "site-local manifests" and len(fed["rounds"]) == 2
    assert fed["stage2_fit"]["mode"] == "aggregates" and fed["stage2_fit"]["over"] == "flower"
    report = json.loads((run / "data_report.json").read_text())
    assert report["manifest"] is None and report["sites"] == plan["sites"]
    assert json.loads((run / "run.json").read_text())["evaluated"] is False
    from clinfuse.review.runview import assembled_from_sites

    assert assembled_from_sites(run) and not assembled_from_sites(ref)  # the app asks for cases
    cohort = Cohort.from_manifest(pooled)
    got = clinfuse.load_run(run).predict(cohort)
    want = clinfuse.load_run(ref).predict(cohort)
    for col in ("p_fusion", "p_image", "p_note", "p_signal", "p_tabular"):
        np.testing.assert_allclose(got[col], want[col], rtol=0, atol=1e-5, err_msg=col)
    assert float(np.abs(got["p_fusion"] - got["p_fusion"].mean()).max()) > 1e-3  # not flat
    site = "site_a"
    evaluate(run, site_manifests[site], tmp_path / "eval_a", split="test", n_boot=20)
    metrics = json.loads((tmp_path / "eval_a" / "metrics.json").read_text())
    assert metrics["n_cases"] == plan["sites"][site]["test"]["n_cases"]


def test_assemble_refuses_what_it_cannot_finish(deployment, tmp_path: Path) -> None:
    """A failed run, a shared-manifest run and a folder without start.json are one-line
    errors naming the folder; nothing is written."""
    import shutil

    from clinfuse.errors import ConfigError
    from clinfuse.federated.assemble import assemble_run

    src = deployment["output"]
    broken = tmp_path / "failed"
    shutil.copytree(src, broken)
    record = json.loads((broken / "federation.json").read_text())
    (broken / "federation.json").write_text(
        json.dumps({**record, "status": "failed", "error": "round 2: only 1 site(s)"})
    )
    with pytest.raises(ConfigError, match=r"did not complete \(status failed: round 2"):
        assemble_run(broken, tmp_path / "out")
    shared = tmp_path / "shared"
    shutil.copytree(src, shared)
    record["config"]["task_options"]["site_local"] = False
    (shared / "federation.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="read a shared manifest"):
        assemble_run(shared, tmp_path / "out")
    nostart = tmp_path / "nostart"
    shutil.copytree(src, nostart)
    (nostart / "start.json").unlink()
    with pytest.raises(ConfigError, match=r"lacks start\.json"):
        assemble_run(nostart, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_site_local_errors_name_the_site_and_the_field(site_manifests, tmp_path: Path) -> None:
    """A site given another site's rows, a SuperNode without a manifest, a task built before
    the plan arrived, and sites whose signals have other leads."""
    from clinfuse.errors import CohortError, ConfigError
    from clinfuse.federated.flower_sites import site_run_config
    from clinfuse.federated.flower_task import make_site_task
    from clinfuse.federated.run import FederatedSettings
    from clinfuse.federated.sites import plan_from_sites, site_cohort

    frame = pd.read_csv(site_manifests["site_a"]).assign(site="site_b")
    wrong = site_manifests["site_a"].parent / "wrong.csv"
    frame.to_csv(wrong, index=False)
    with pytest.raises(CohortError, match=r"site 'site_a': the manifest has rows of other sites"):
        site_cohort(wrong, _config(), "site_a")
    options = dict(
        site_run_config(_config(), FederatedSettings(rounds=1), n_sites=2).task_options or {}
    )
    from clinfuse.federated.flower_sites import DESCRIBE, describe
    from privacy.flower.client_app import SiteQuery

    one_class = site_manifests["site_a"].parent / "one_class.csv"
    pd.read_csv(site_manifests["site_a"]).assign(label=1).to_csv(one_class, index=False)
    node = {"site": "site_a", "manifest": str(one_class)}
    with pytest.raises(ConfigError, match=r"^site 'site_a': field 'label', .*needs both 0 and 1"):
        describe(SiteQuery(DESCRIBE, {}, {}, node, options))
    with pytest.raises(ConfigError, match="no plan reached this site"):
        make_site_task({"site": "site_a", "manifest": str(site_manifests["site_a"])}, options)
    with pytest.raises(ConfigError, match="has no manifest"):
        make_site_task({"site": "site_a"}, {**options, "plan": {"format": 1}})
    desc = {
        "splits": {"train": {"n_cases": 5}},
        "modalities": {"signal": 5},
        "tabular": None,
    }
    with pytest.raises(CohortError, match=r"different signal leads \(a: 1, b: 12\)"):
        plan_from_sites(
            {
                "a": {**desc, "shapes": {"signal_leads": 1}},
                "b": {**desc, "shapes": {"signal_leads": 12}},
            },
            RunConfig(),
        )


@pytest.mark.slow
def test_site_local_manifests_over_real_flower_processes(site_manifests, tmp_path: Path) -> None:
    """The deployment of docs/federated.md on loopback: a SuperLink and three SuperNodes,
    each given only its own manifest (node config), the run config `clinfuse flower-config`
    writes, then `clinfuse flower-assemble` on the ServerApp's output. The assembled model
    predicts what the in-process simulator trained on all rows with the sites' splits."""
    import os
    import tomllib

    import clinfuse
    from clinfuse.cohort import Cohort
    from clinfuse.federated import federated_run
    from clinfuse.federated.assemble import assemble_run
    from clinfuse.federated.cli import flower_config
    from clinfuse.federated.run import FederatedSettings
    from privacy.flower.config import FlowerRunConfig
    from privacy.flower.local import run_local_federation

    config = tmp_path / "config.yaml"
    _config().save(config)
    toml = tmp_path / "run.toml"
    flower_config(toml, 3, str(tmp_path / "ignored"), rounds=1, config=config, stage2="aggregates")
    cfg = FlowerRunConfig.from_run_config(tomllib.loads(toml.read_text()))
    assert cfg.start and cfg.min_fit_clients == 3 and cfg.min_available_clients == 3
    repo = str(Path(clinfuse.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    nodes = [{"site": s, "manifest": str(p)} for s, p in sorted(site_manifests.items())]
    result = run_local_federation(nodes, cfg, tmp_path / "flower", timeout=900, env=env)
    assert result.status == "completed", result.error
    assert result.record["start"]["task_options"] == ["modalities", "plan"]
    run = assemble_run(tmp_path / "flower", tmp_path / "fed")
    plan = result.start["plan"]
    pooled = _pooled_manifest(site_manifests, plan)
    settings = FederatedSettings(rounds=1, baselines=False, stage2="aggregates")
    ref = federated_run(pooled, tmp_path / "sim", _config(), settings, n_boot=0)
    cohort = Cohort.from_manifest(pooled)
    got = clinfuse.load_run(run).predict(cohort)
    want = clinfuse.load_run(ref).predict(cohort)
    for col in ("p_fusion", "p_image", "p_note", "p_signal", "p_tabular"):
        np.testing.assert_allclose(got[col], want[col], rtol=0, atol=1e-5, err_msg=col)


def test_the_coordinator_builds_the_sites_model_also_under_dp(deployment, site_manifests) -> None:
    """flower-assemble's model (plan_model, no case read) has the parameter layout and the
    initial values of every site's task; with DP-SGD both use GroupNorm."""
    from clinfuse.federated.assemble import plan_model
    from clinfuse.federated.flower_task import make_site_task
    from clinfuse.federated.task import trainable_view
    from privacy.dp.engine import DPConfig
    from privacy.federated.torch_task import get_parameters, parameter_keys

    node = {"site": "site_c", "manifest": str(site_manifests["site_c"])}
    for dp in (None, DPConfig(target_epsilon=8.0, target_delta=1e-5).to_dict()):
        options = {**deployment["options"], "dp": dp}
        model = plan_model(options)
        keys = parameter_keys(trainable_view(model))
        task = make_site_task(node, options)
        assert keys == task.keys
        for a, b in zip(
            get_parameters(trainable_view(model), keys), task.get_parameters(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        norms = {type(m).__name__ for m in model.network.modules()}
        assert ("GroupNorm" in norms) == (dp is not None)


def test_a_site_without_imaging_trains_without_dp_and_is_named_under_dp(
    deployment, site_manifests
) -> None:
    """A hospital whose manifest has no image column takes part (its cases miss the image);
    under DP-SGD, which needs one input per encoder at every site, it is refused by name."""
    from clinfuse.federated.flower_task import make_site_task
    from privacy.dp.engine import DPConfig
    from privacy.errors import SiteDataError
    from privacy.federated.task import FitConfig

    frame = pd.read_csv(site_manifests["site_c"]).drop(columns=["image"])
    path = site_manifests["site_c"].parent / "site_c_no_image.csv"
    frame.to_csv(path, index=False)
    node = {"site": "site_c", "manifest": str(path)}
    task = make_site_task(node, deployment["options"])
    before = task.get_parameters()
    res = task.fit(before, FitConfig(server_round=1, local_epochs=1, lr=0.01, batch_size=4))
    assert res.num_examples == deployment["started"]["plan"]["sites"]["site_c"]["train"]["n_cases"]
    assert any(not np.array_equal(a, b) for a, b in zip(res.parameters, before, strict=True))
    dp = DPConfig(target_epsilon=8.0, target_delta=1e-5).to_dict()
    with pytest.raises(SiteDataError, match="site 'site_c' has no case with modality 'image'"):
        make_site_task(node, {**deployment["options"], "dp": dp})
