"""The cohort manifest contract (DESIGN.md, "Cohort manifest")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinfuse.cohort import Cohort, assign_splits, split_cohort, validate_cohort
from clinfuse.errors import ClinFuseError, CohortError, DataFileNotFoundError, ModalityLoadError
from clinfuse.io.note import load_note
from clinfuse.io.tabular import TabularEncoder


def _touch(path: Path, text: str = "Pt c/o SOB. Denies fever.") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_and_parquet_read_the_same(tmp_path, write_manifest):
    _touch(tmp_path / "notes" / "a.txt")
    rows = [
        {
            "case_id": "007",
            "patient_id": "p1",
            "label": 1,
            "note": "notes/a.txt",
            "age": 70,
            "sex": "F",
        },
        {
            "case_id": "008",
            "patient_id": None,
            "label": 0,
            "note_text": "No acute distress.",
            "age": None,
            "sex": "M",
        },
    ]
    for name in ("m.csv", "m.parquet"):
        cohort = Cohort.from_manifest(write_manifest(rows, name))
        assert cohort.case_ids == ["007", "008"]  # ids stay text: leading zeros kept
        a, b = cohort.rows
        assert a.note == (tmp_path / "notes" / "a.txt").resolve()  # relative to the manifest folder
        assert b.patient_id == "008"  # defaults to case_id
        assert b.note_text == "No acute distress."
        assert a.label == 1 and b.label == 0
        assert cohort.extra_columns == ["age", "sex"]
        assert a.extra["age"] == 70 and b.extra["age"] is None
        presence = cohort.declared_presence()
        assert presence.loc["007"].tolist() == [False, True, False]
        assert presence.loc["008", "note"]


def test_manifest_folder_is_accepted(tmp_path, write_manifest):
    write_manifest([{"case_id": "a", "label": 0}])
    assert Cohort.from_manifest(tmp_path).case_ids == ["a"]


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"case_id": "a"}, {"case_id": "a"}], "'a' appears 2 times"),
        ([{"patient_id": "p"}], "required column 'case_id' is missing"),
        (
            [
                {"case_id": "a", "patient_id": "p", "split": "train"},
                {"case_id": "b", "patient_id": "p", "split": "test"},
            ],
            "patient 'p' is in several splits",
        ),
    ],
    ids=["duplicate-id", "no-case_id-column", "patient-in-two-splits"],
)
def test_manifest_wide_errors_raise(write_manifest, rows, needle):
    with pytest.raises(CohortError, match=needle):
        Cohort.from_manifest(write_manifest(rows))


def test_empty_manifest(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("case_id,label\n")
    with pytest.raises(CohortError, match="no rows") as exc:
        Cohort.from_manifest(path)
    assert "m.csv" in str(exc.value)


def test_unknown_format_and_missing_file(tmp_path):
    bad = tmp_path / "m.xlsx"
    bad.write_text("x")
    with pytest.raises(CohortError, match="unknown manifest format"):
        Cohort.from_manifest(bad)
    with pytest.raises(CohortError, match="not found"):
        Cohort.from_manifest(tmp_path / "nope.csv")


def test_missing_label_column_when_required(write_manifest):
    with pytest.raises(CohortError, match="outcome column 'label' is missing"):
        Cohort.from_manifest(write_manifest([{"case_id": "a"}]), require_label=True)


def test_per_case_errors_exclude_the_case_and_name_it(tmp_path, write_manifest):
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("x")
    rows = [
        {"case_id": "ok", "label": 1},
        {"case_id": "bad_label", "label": 2},
        {"case_id": "bad_split", "label": 0, "split": "holdout"},
        {"case_id": "escapes", "label": 0, "note": "../outside.txt"},
        {"case_id": "bad_fs", "label": 0, "signal": "s.npy", "signal_fs": -5},
    ]
    cohort = Cohort.from_manifest(write_manifest(rows))
    assert cohort.case_ids == ["ok"]
    by_case = {i.case_id: i for i in cohort.excluded}
    assert set(by_case) == {"bad_label", "bad_split", "escapes", "bad_fs"}
    assert (
        by_case["bad_label"].field == "label" and "must be 0 or 1" in by_case["bad_label"].message
    )
    assert (
        by_case["escapes"].field == "note"
        and "outside the cohort folder" in by_case["escapes"].message
    )
    assert by_case["bad_fs"].field == "signal_fs"
    # With permission, an external path is fine.
    relaxed = Cohort.from_manifest(write_manifest(rows), allow_external_paths=True)
    assert "escapes" in relaxed


def test_custom_target_column(write_manifest):
    cohort = Cohort.from_manifest(
        write_manifest([{"case_id": "a", "sepsis": 1, "label": 7}]), target="sepsis"
    )
    assert cohort.rows[0].label == 1
    assert "label" in cohort.extra_columns  # an ordinary column now


# -- splitting ------------------------------------------------------------
def test_splits_are_patient_level_stratified_and_seeded():
    rng = np.random.default_rng(0)
    n_patients = 600
    patients = [f"p{i}" for i in range(n_patients) for _ in range(rng.integers(1, 4))]
    prevalence = 0.3
    p_label = {p: int(rng.random() < prevalence) for p in set(patients)}
    labels = [p_label[p] for p in patients]
    sites = [("A", "B", "C")[hash(p) % 3] for p in patients]
    splits = assign_splits(patients, labels, seed=3, strata=sites)

    frame = pd.DataFrame({"patient": patients, "label": labels, "split": splits})
    assert (frame.groupby("patient")["split"].nunique() == 1).all()  # no patient crosses splits
    overall = frame["label"].mean()
    for split, share in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=True):
        part = frame[frame["split"] == split]
        assert abs(part["label"].mean() - overall) <= 0.05, split  # stratification within ±5 %
        n_pat = part["patient"].nunique()
        assert abs(n_pat / n_patients - share) < 0.03
    assert splits == assign_splits(patients, labels, seed=3, strata=sites)
    assert splits != assign_splits(patients, labels, seed=4, strata=sites)


def test_split_cohort_keeps_manifest_splits(write_manifest):
    rows = [{"case_id": f"c{i}", "patient_id": f"p{i // 2}", "label": i % 2} for i in range(40)]
    rows[0]["split"] = "test"  # p0 is pinned to test, its other case c1 follows
    cohort = split_cohort(Cohort.from_manifest(write_manifest(rows)), seed=0)
    by_id = {r.case_id: r.split for r in cohort.rows}
    assert by_id["c0"] == by_id["c1"] == "test"
    assert set(by_id.values()) == {"train", "val", "test"}


def test_bad_split_fractions():
    with pytest.raises(ClinFuseError, match="sum"):
        assign_splits(["a"], [1], fractions=(0.5, 0.2, 0.2))


# -- notes ------------------------------------------------------------------
def test_note_file_and_inline(tmp_path):
    path = tmp_path / "n.txt"
    path.write_bytes("\ufeffPt is 67yo.\r\nDenies CP.".encode())
    text, meta = load_note(path)
    assert (
        text == "Pt is 67yo.\nDenies CP." and meta["format"] == "text_file" and meta["n_words"] == 5
    )
    text, meta = load_note(text="SOB x3d")
    assert text == "SOB x3d" and meta["format"] == "inline"


@pytest.mark.parametrize(
    ("content", "error", "needle"),
    [
        (b"\xe9t\xe9 fever", ModalityLoadError, "not valid UTF-8"),
        (b"   \n ", ModalityLoadError, "empty"),
        (b"ab\x00cd", ModalityLoadError, "NUL"),
        (None, DataFileNotFoundError, "not found"),
    ],
    ids=["latin1", "blank", "binary", "missing"],
)
def test_bad_notes(tmp_path, content, error, needle):
    path = tmp_path / "case42_note.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=needle) as exc:
        load_note(path, case_id="case42")
    assert "case42" in str(exc.value) and "case42_note.txt" in str(exc.value)


# -- tabular ------------------------------------------------------------------
def test_tabular_standardises_against_numpy_and_masks_missing():
    frame = pd.DataFrame(
        {"case_id": list("abcd"), "crp": [10.0, 20.0, None, 50.0], "sex": ["F", "M", "", "F"]}
    )
    enc = TabularEncoder(["crp", "sex"]).fit(frame)
    observed = np.array([10.0, 20.0, 50.0])
    assert enc.means_["crp"] == pytest.approx(observed.mean())
    assert enc.stds_["crp"] == pytest.approx(observed.std())
    values, mask = enc.transform(frame)
    assert enc.feature_names_ == ["crp", "sex=F", "sex=M"]
    np.testing.assert_allclose(
        values[[0, 1, 3], 0], (observed - observed.mean()) / observed.std(), rtol=1e-6
    )
    assert mask[:, 0].tolist() == [1, 1, 0, 1]
    assert values[2].tolist() == [0, 0, 0] and mask[2].tolist() == [
        0,
        0,
        0,
    ]  # missing: zero AND masked
    assert values[1, 1:].tolist() == [0, 1]
    restored = TabularEncoder.from_dict(enc.to_dict())
    np.testing.assert_array_equal(restored.transform(frame)[0], values)


def test_tabular_check_row_flags_values_outside_the_training_data():
    train = pd.DataFrame({"crp": [10.0, 20.0, 30.0, 40.0], "sex": ["F", "M", "F", "M"]})
    enc = TabularEncoder(["crp", "sex"]).fit(train)
    mean, sd = 25.0, float(np.std([10.0, 20.0, 30.0, 40.0]))
    inside = 25.0 + 3.9 * sd
    outside = 25.0 + 4.1 * sd
    assert enc.check_row({"crp": inside, "sex": "F"}) == []
    assert enc.check_row({"crp": "", "sex": None}) == []  # missing is not out of range
    [msg] = enc.check_row({"crp": outside, "sex": " M "})
    assert msg == f"crp {outside:g} is 4.1 SD above the training mean ({mean:.3g} ± {sd:.3g})"
    [low] = enc.check_row({"crp": 25.0 - 5 * sd})
    assert "5.0 SD below" in low
    [level] = enc.check_row({"crp": 25.0, "sex": "Mrs Smith"})
    assert level == "sex has a level never seen in training (treated as missing)"
    assert "Smith" not in level  # the cell itself is not copied into outputs


def test_tabular_bad_values_name_the_case_and_column():
    enc = TabularEncoder(["crp"]).fit(pd.DataFrame({"crp": [1.0, 2.0]}))
    with pytest.raises(ModalityLoadError, match="not a number") as exc:
        enc.transform(pd.DataFrame({"case_id": ["c9"], "crp": ["high"]}))
    assert "c9" in str(exc.value) and "crp" in str(exc.value)
    with pytest.raises(CohortError, match="not in the manifest"):
        TabularEncoder(["lactate"]).fit(pd.DataFrame({"crp": [1.0]}))
    with pytest.raises(CohortError, match="free text or an id"):
        TabularEncoder(["mrn"], max_levels=3).fit(pd.DataFrame({"mrn": list("abcdef")}))


# -- validate -------------------------------------------------------------------
def test_validate_lists_every_problem_without_stopping(tmp_path, write_manifest):
    _touch(tmp_path / "notes" / "good.txt")
    _touch(tmp_path / "notes" / "empty.txt", "  ")
    rows = [
        {"case_id": "good", "label": 1, "note": "notes/good.txt"},
        {"case_id": "empty_note", "label": 0, "note": "notes/empty.txt"},
        {"case_id": "missing_note", "label": 0, "note": "notes/nope.txt"},
        {"case_id": "label3", "label": 3, "note_text": "fine"},
        {"case_id": "dup", "label": 0},
        {"case_id": "dup", "label": 1},
    ]
    report = validate_cohort(write_manifest(rows))
    assert not report.ok
    errors = {(i.case_id, i.field) for i in report.errors}
    assert errors == {
        ("empty_note", "note"),
        ("missing_note", "note"),
        ("label3", "label"),
        ("dup", "case_id"),
    }
    assert report.presence["note"] == 1 and report.declared["note"] == 3
    table = report.to_frame()
    assert list(table.columns) == ["case_id", "field", "severity", "path", "message"]
    assert table.loc[table.case_id == "missing_note", "path"].item().endswith("nope.txt")
