"""Explanations on synthetic cohorts with known ground truth (truth.csv).

- a modality synthesized without signal gets the smallest mean |φ|;
- the image heat map's mass falls on the lesion far more than the lesion's area share.

Slow (~3 min on 2 cores): the tiny encoders need a 400-case cohort to learn the
informative modalities; on the 64-case fixture run neither effect is reliable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("shap")


def _load(run: Path, manifest: Path):
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.model import load_run

    model = load_run(run)
    rows = Cohort.from_manifest(manifest, target=model.config.data.target).rows
    cases = CaseLoader(model.config.data, model.modalities, model.tabular).load_many(rows).cases
    splits = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    split = dict(zip(splits["case_id"], splits["split"], strict=True))
    return model, cases, split


@pytest.mark.slow
def test_uninformative_modality_smallest_and_lesion_heatmap(tmp_path: Path) -> None:
    from clinfuse.explain.modality import build_modality_cache, modality_shapley
    from clinfuse.synth import synthesize_cohort
    from clinfuse.training import train_run
    from tests.conftest import tiny_config

    manifest = synthesize_cohort(
        tmp_path / "cohort",
        n_cases=400,
        seed=1,
        image_size=32,
        signal_fs=50,
        signal_seconds=4.0,
        uninformative=["tabular"],
    )
    run = train_run(manifest, tmp_path / "run", tiny_config(epochs=40, patience=40, lr=3e-3))
    model, cases, split = _load(run, manifest)
    cache = build_modality_cache(model, cases)
    exp = modality_shapley(model, cache)
    held_out = [i for i, cid in enumerate(cache.case_ids) if split[cid] != "train"]
    mean_abs = np.abs(exp.values[held_out]).mean(axis=0)
    ranking = dict(zip(model.modalities, mean_abs.round(4).tolist(), strict=True))
    print("mean |phi| on held-out cases:", ranking)
    assert model.modalities[int(np.argmin(mean_abs))] == "tabular", ranking

    # the image heat map falls on the lesion (truth.csv, DICOM grid → model grid)
    from clinfuse.explain.within import explain_image, image_lesion_mass, lesion_mask

    truth = pd.read_csv(manifest.parent / "truth.csv", dtype={"case_id": str}).set_index("case_id")
    bg = np.stack(
        [
            c["image"]
            for c in cases
            if split[c["case_id"]] == "train" and c.get("image") is not None
        ][:16]
    )
    size = model.config.data.image.spatial_size
    inside, area = [], []
    for c in cases:
        t = truth.loc[c["case_id"]]
        if split[c["case_id"]] != "test" or c.get("image") is None or t["lesion_present"] != 1:
            continue
        cols_rows = tuple((c.get("image_meta") or {}).get("spatial_shape", (32, 32)))[:2]
        mask = lesion_mask(
            size,
            (int(cols_rows[1]), int(cols_rows[0])),
            t.lesion_row,
            t.lesion_col,
            t.lesion_radius_px,
        )
        a, b = image_lesion_mass(
            explain_image(model, c, background=bg, n_samples=100).heatmap, mask
        )
        inside.append(a)
        area.append(b)
    print(f"lesion mass {np.mean(inside):.4f} vs area {np.mean(area):.4f} over {len(inside)} cases")
    assert len(inside) >= 10
    assert np.mean(inside) > 3 * np.mean(area)
