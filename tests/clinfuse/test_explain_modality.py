"""Modality Shapley values: exactness against brute force, additivity, cohort importance, CLI.

References: Shapley values by brute-force enumeration of all coalitions with
the factorial weights (computed here, independent of shap); AUROC of each
coalition against ``sklearn.metrics.roc_auc_score``.
"""

from __future__ import annotations

import copy
import itertools
import json
import warnings
from math import factorial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clinfuse.errors import CohortError
from clinfuse.explain import NoModalityWarning
from clinfuse.explain.modality import (
    ModalityCache,
    build_modality_cache,
    coalition_values,
    modality_importance,
    modality_shapley,
    modality_shapley_frame,
    performance_shapley,
)
from clinfuse.fusion import FusionConfig, build_fusion
from clinfuse.synth import TABULAR_COLUMNS

MODS = ["image", "note", "signal", "tabular"]


def brute_force_shapley(value, n: int) -> np.ndarray:
    """Shapley values of a set function by enumerating every coalition (the textbook formula)."""
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            weight = factorial(k) * factorial(n - k - 1) / factorial(n)
            for s in itertools.combinations(others, k):
                phi[i] += weight * (value(set(s) | {i}) - value(set(s)))
    return phi


def fused_value(fusion, embeddings: dict[str, np.ndarray], present: np.ndarray):
    """v(S) for one case: the head itself, float64, presence restricted to S."""
    head = copy.deepcopy(fusion).double().eval()
    emb = {m: torch.from_numpy(e[None]).double() for m, e in embeddings.items()}

    def value(s: set[int]) -> float:
        mask = torch.tensor([[bool(present[j]) and j in s for j in range(len(present))]])
        with torch.no_grad():
            return float(head(emb, mask).logit[0])

    return value


def random_cache(n: int = 12, seed: int = 0, dims: dict[str, int] | None = None) -> ModalityCache:
    rng = np.random.default_rng(seed)
    dims = dims or {"image": 6, "note": 5, "signal": 4, "tabular": 3}
    present = rng.random((n, len(MODS))) < 0.7
    present[0] = True  # one complete case
    present[1] = [True, False, False, False]  # a single modality
    present[np.flatnonzero(~present.any(axis=1)), 2] = True
    emb = {
        m: np.where(present[:, [j]], rng.normal(size=(n, dims[m])), 0.0).astype(np.float32)
        for j, m in enumerate(MODS)
    }
    labels = np.tile([0.0, 1.0], n // 2 + 1)[:n]
    return ModalityCache([f"c{i}" for i in range(n)], list(MODS), emb, present, labels)


@pytest.mark.parametrize("strategy", ["late", "early", "intermediate"])
def test_modality_shapley_equals_brute_force_for_every_fusion(strategy: str) -> None:
    torch.manual_seed(0)
    cache = random_cache()
    dims = {m: e.shape[1] for m, e in cache.embeddings.items()}
    fusion = build_fusion(FusionConfig(strategy=strategy, hidden=16, n_heads=2), MODS, dims)
    with torch.no_grad():  # a late head with non-trivial weights, bias and centres
        for p in fusion.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if strategy == "late":
            fusion.center.copy_(torch.randn(len(MODS)))
    fusion.eval()
    exp = modality_shapley(fusion, cache)
    assert exp.values.shape == (len(cache), len(MODS))
    assert list(exp.feature_names) == MODS
    for i in range(len(cache)):
        emb_i = {m: cache.embeddings[m][i] for m in MODS}
        value = fused_value(fusion, emb_i, cache.present[i])
        np.testing.assert_allclose(exp.values[i], brute_force_shapley(value, len(MODS)), atol=1e-9)
        assert exp.base_values[i] == pytest.approx(value(set()), abs=1e-9)
        # efficiency: base + Σφ = the fused logit with the case's own presence mask
        full = value(set(range(len(MODS))))
        assert exp.base_values[i] + exp.values[i].sum() == pytest.approx(full, abs=1e-9)
        # a missing modality gets exactly 0
        assert np.all(exp.values[i][~cache.present[i]] == 0.0)
    # the float32 network agrees with the float64 explanation within 1e-5
    emb32 = {m: torch.from_numpy(e) for m, e in cache.embeddings.items()}
    with torch.no_grad():
        logit32 = fusion(emb32, torch.from_numpy(cache.present)).logit.numpy()
    assert np.abs(exp.base_values + exp.values.sum(axis=1) - logit32).max() < 1e-5


def test_case_without_modality_is_the_base_rate() -> None:
    cache = random_cache(n=4)
    cache.present[3] = False
    for m in MODS:
        cache.embeddings[m][3] = 0.0
    torch.manual_seed(1)
    fusion = build_fusion(
        FusionConfig(strategy="early", hidden=8),
        MODS,
        {m: e.shape[1] for m, e in cache.embeddings.items()},
    ).eval()
    with pytest.warns(NoModalityWarning, match="base rate"):
        exp = modality_shapley(fusion, cache)
    assert np.all(exp.values[3] == 0.0)
    table = coalition_values(fusion, cache)
    assert exp.base_values[3] == pytest.approx(table[3, -1])  # nothing observed = base


def _run_cases(run: Path, cohort: Path):
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.model import load_run

    model = load_run(run)
    rows = Cohort.from_manifest(cohort, target=model.config.data.target).rows
    cases = CaseLoader(model.config.data, model.modalities, model.tabular).load_many(rows).cases
    return model, cases


def test_trained_late_run_additive_and_closed_form(tiny_run: Path, tiny_cohort: Path) -> None:
    model, cases = _run_cases(tiny_run, tiny_cohort)
    cache = build_modality_cache(model, cases)
    exp = modality_shapley(model, cache)
    raw = model.forward_cases(cases)
    err = np.abs(exp.base_values + exp.values.sum(axis=1) - raw["logit"]).max()
    assert err < 1e-5, err
    fusion = model.network.fusion
    with torch.no_grad():
        closed = fusion.contributions(
            torch.from_numpy(raw["unimodal"]), torch.from_numpy(raw["present"])
        ).numpy()
        bias = float(fusion.bias)
    np.testing.assert_allclose(exp.values, closed, atol=1e-5)
    np.testing.assert_allclose(exp.base_values, bias, atol=1e-6)
    frame = modality_shapley_frame(exp, cache)
    assert list(frame.columns) == [
        "case_id",
        "base_value",
        *[f"phi_{m}" for m in model.modalities],
        "logit_fusion",
    ]


def test_importance_and_performance_shapley(tiny_run: Path, tiny_cohort: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from clinfuse.explain.modality import coalition_masks

    model, cases = _run_cases(tiny_run, tiny_cohort)
    cache = build_modality_cache(model, cases)
    exp = modality_shapley(model, cache)
    imp = modality_importance(exp, n_boot=200)
    for j, m in enumerate(model.modalities):
        assert imp[m]["mean_abs_phi"] == pytest.approx(np.abs(exp.values[:, j]).mean())
        assert imp[m]["ci_low"] <= imp[m]["mean_abs_phi"] <= imp[m]["ci_high"]
        assert imp[m]["n_present"] == int(cache.present[:, j].sum())

    perf = performance_shapley(model, cache, n_boot=100)
    table = coalition_values(model, cache)
    masks = coalition_masks(len(model.modalities))
    y = cache.labels
    for s in range(1, len(masks)):
        name = "+".join(m for m, on in zip(model.modalities, masks[s], strict=True) if on)
        assert perf["subsets"][name] == pytest.approx(roc_auc_score(y, table[:, s]))
    assert perf["value_empty"] == pytest.approx(0.5)
    total = sum(v["value"] for v in perf["modalities"].values())
    assert total == pytest.approx(perf["value_all"] - 0.5)  # efficiency
    # brute force on the AUROC set function
    value = {
        frozenset(np.flatnonzero(masks[s]).tolist()): perf["subsets"].get(
            "+".join(m for m, on in zip(model.modalities, masks[s], strict=True) if on), 0.5
        )
        for s in range(len(masks))
    }
    ref = brute_force_shapley(lambda s: value[frozenset(s)], len(model.modalities))
    got = [perf["modalities"][m]["value"] for m in model.modalities]
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_explain_run_unknown_case_names_it(
    tiny_run: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.explain import explain_run

    with pytest.raises(CohortError, match="no_such_case"):
        explain_run(tiny_run, tiny_cohort, tmp_path / "ex", case="no_such_case", cache_in_run=False)


def test_explain_cli_writes_contract_and_figures(
    tiny_run: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    import typer
    from typer.testing import CliRunner

    from clinfuse.explain.cli import EXPLAIN_EPILOG, explain

    app = typer.Typer()
    app.command(epilog=EXPLAIN_EPILOG)(explain)
    app.command("noop")(lambda: None)  # keep `explain` a subcommand, as in clinfuse.cli
    pred = pd.read_csv(tiny_run / "predictions.csv", dtype={"case_id": str})
    truth = pd.read_csv(tiny_cohort.parent / "truth.csv", dtype={"case_id": str})
    with_phi = set(truth["case_id"][truth["note_phi"].notna()])  # name, MRN, date in the note
    complete = pred["case_id"][(pred.filter(like="present_").sum(axis=1) == 4)]
    case_id = next(c for c in complete if c in with_phi)
    planted = truth.set_index("case_id").loc[case_id, "note_phi"].split("|")
    out = tmp_path / "ex"
    res = CliRunner().invoke(
        app,
        [
            "explain",
            str(tiny_run),
            str(tiny_cohort),
            "--case",
            case_id,
            "--out",
            str(out),
            "--note-max-evals",
            "30",
            "--n-boot",
            "50",
            "--no-run-cache",
        ],
    )
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(out / "modality_shapley.csv", dtype={"case_id": str})
    phi_cols = [c for c in frame.columns if c.startswith("phi_")]
    np.testing.assert_allclose(
        frame["base_value"] + frame[phi_cols].sum(axis=1), frame["logit_fusion"], atol=1e-9
    )
    merged = frame.merge(pred, on="case_id", suffixes=("", "_pred"))
    assert len(merged) == len(pred)
    assert np.abs(merged["logit_fusion"] - merged["logit_fusion_pred"]).max() < 1e-5
    case_dir = out / "cases" / case_id
    info = json.loads((case_dir / "explanation.json").read_text())
    assert set(info["within"]) == {"image", "note", "signal", "tabular"}
    for name in (
        "modality_waterfall.png",
        "image_heatmap.png",
        "signal_overlay.png",
        "note_tokens.png",
    ):
        assert (case_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "<span" in (case_dir / "note.html").read_text()
    # the cohort is not de-identified: the note's identifiers are masked in what is stored
    note = info["within"]["note"]
    joined = "".join(note["tokens"])
    assert "Patient: [NAME]" in joined and "MRN: [MRN]" in joined, joined[:200]
    assert note["identifiers_masked"]["NAME"] >= 1 and len(note["tokens"]) == len(note["values"])
    for value in planted:
        for part in value.split():
            assert part not in joined and part not in (case_dir / "note.html").read_text()
    assert (out / "modality_importance.png").exists()
    imp = json.loads((out / "modality_importance.json").read_text())
    assert set(imp["mean_abs_phi"]) == set(phi_c[4:] for phi_c in phi_cols)
    assert not (tiny_run / "explanations" / "cases" / case_id).exists()  # --no-run-cache


def test_explain_run_caches_in_run_and_base_rate_case(
    tiny_run: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    import shutil

    from clinfuse.explain import explain_run, load_cached_case, load_cached_modality_shapley

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_cohort.parent, tmp_path / "cohort")
    manifest = pd.read_csv(tiny_cohort, dtype={"case_id": str})
    empty = manifest["case_id"].iloc[0]
    for col in ("image", "note", "signal", *TABULAR_COLUMNS):
        manifest[col] = manifest[col].astype(object)
        manifest.loc[0, col] = None
    path = tmp_path / "cohort" / "manifest_blank.csv"
    manifest.to_csv(path, index=False)
    # the run's own cohort (as its data report names it): explanations are cached in the run
    report = json.loads((run / "data_report.json").read_text())
    (run / "data_report.json").write_text(json.dumps({**report, "manifest": str(path)}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = explain_run(run, path, tmp_path / "ex", case=empty, n_boot=20)
    assert any(issubclass(w.category, NoModalityWarning) for w in caught)
    info = summary["case"]
    assert "base rate" in info["message"]
    assert all(v == 0.0 for v in info["modality_shapley"]["phi"].values())
    cached = load_cached_case(run, empty)
    assert cached is not None and cached["message"] == info["message"]
    frame = load_cached_modality_shapley(run)
    assert frame is not None and len(frame) == len(manifest) - 1
    assert empty not in set(frame["case_id"])


def test_explain_keeps_note_tokens_of_a_deidentified_cohort(
    tiny_run: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    """A cohort that came out of `clinfuse deid` (its report next to the manifest) is shown
    as stored, and `keep_note_identifiers` keeps the tokens of any cohort."""
    import shutil

    from clinfuse.explain import explain_run

    truth = pd.read_csv(tiny_cohort.parent / "truth.csv", dtype={"case_id": str})
    pred = pd.read_csv(tiny_run / "predictions.csv", dtype={"case_id": str})
    with_note = set(pred["case_id"][pred["present_note"] == 1])
    case_id = next(c for c in truth["case_id"][truth["note_phi"].notna()] if c in with_note)
    name = truth.set_index("case_id").loc[case_id, "note_phi"].split("|")[0]
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, cohort)
    (cohort / "deid_report.json").write_text("{}")
    kw = {"case": case_id, "note_max_evals": 10, "n_boot": 0, "cache_in_run": False}
    kept = explain_run(tiny_run, cohort / "manifest.csv", tmp_path / "a", **kw)
    note = kept["case"]["within"]["note"]
    assert name in "".join(note["tokens"]) and note["identifiers_masked"] is None
    kept = explain_run(tiny_run, tiny_cohort, tmp_path / "b", keep_note_identifiers=True, **kw)
    assert name in "".join(kept["case"]["within"]["note"]["tokens"])
