"""Seeded, stratified, patient-level train/val/test splitting.

Splits are by patient: every case of a patient lands in the same split, so no
patient is seen in training and evaluated in test. Patients are stratified by
their outcome (a patient is positive if any of their cases is positive;
patients without any known outcome form their own stratum) and, optionally, by
site, so each split keeps the cohort's prevalence.

Cases that already carry a split in the manifest keep it; their patients'
other cases follow them.

With ``by_date`` (``data.split_by_date``) the split is temporal instead: patients are
ordered by the date of their first case, the earliest go to train, then val, the latest to
test — the model is validated on later patients than it learned from.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from clinfuse.cohort.manifest import SPLITS, CaseRow, Cohort
from clinfuse.errors import ConfigError

__all__ = ["assign_folds", "assign_splits", "assign_splits_by_date", "split_cohort"]


def assign_splits(
    patient_ids: Sequence[str],
    labels: Sequence[float | None],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    strata: Sequence[str | None] | None = None,
) -> list[str]:
    """Assign ``train``/``val``/``test`` to cases, patient-level and stratified.

    Args:
        patient_ids: (N,) patient of each case.
        labels: (N,) outcome of each case (0/1, or None/NaN if unknown).
        fractions: shares of patients for train, val, test; must sum to 1.
        seed: random seed; the same inputs and seed give the same splits.
        strata: (N,) optional extra stratification key per case (e.g. site).

    Returns:
        (N,) split name per case.

    >>> assign_splits(["a", "a", "b", "c"], [1, 0, 0, 1], fractions=(0.5, 0.0, 0.5), seed=1)
    ['test', 'test', 'train', 'train']
    """
    _check_fractions(fractions)
    if len(labels) != len(patient_ids) or (strata is not None and len(strata) != len(patient_ids)):
        raise ValueError("patient_ids, labels and strata must have the same length")

    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for members in _patient_strata(patient_ids, labels, strata).values():
        order = rng.permutation(len(members))
        n = len(members)
        n_test = round(n * fractions[2])
        n_val = round(n * fractions[1])
        n_val = min(n_val, n - n_test)
        for rank, idx in enumerate(order):
            if rank < n_test:
                split = "test"
            elif rank < n_test + n_val:
                split = "val"
            else:
                split = "train"
            assignment[members[idx]] = split
    return [assignment[pid] for pid in patient_ids]


def assign_splits_by_date(
    patient_ids: Sequence[str],
    dates: np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> list[str]:
    """Assign ``train``/``val``/``test`` in time order: patients sorted by their earliest
    date (ties by patient id), the first shares to train, the last to test.

    Args:
        patient_ids: (N,) patient of each case.
        dates: (N,) ``datetime64`` of each case (no NaT).
        fractions: shares of patients for train, val, test; must sum to 1.

    Returns:
        (N,) split name per case.

    >>> import numpy as np
    >>> d = np.array(["2024-03-01", "2023-01-05", "2024-01-02", "2023-06-01"], "datetime64[D]")
    >>> assign_splits_by_date(["a", "b", "c", "d"], d, fractions=(0.5, 0.25, 0.25))
    ['test', 'train', 'val', 'train']
    """
    _check_fractions(fractions)
    first: dict[str, np.datetime64] = {}
    for pid, day in zip(patient_ids, np.asarray(dates, dtype="datetime64[ns]"), strict=True):
        first[pid] = min(first.get(pid, day), day)
    order = sorted(first, key=lambda pid: (first[pid], pid))
    n = len(order)
    n_test = round(n * fractions[2])
    n_val = min(round(n * fractions[1]), n - n_test)
    n_train = n - n_test - n_val
    split = {
        pid: "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        for rank, pid in enumerate(order)
    }
    return [split[pid] for pid in patient_ids]


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ConfigError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}",
            field="split_fractions",
        )


def _patient_strata(
    patient_ids: Sequence[str],
    labels: Sequence[float | None],
    strata: Sequence[str | None] | None,
) -> dict[tuple[int, str | None], list[str]]:
    """Patients grouped by (any-positive label, extra stratum of their first case), sorted."""
    patient_label: dict[str, int] = {}
    patient_stratum: dict[str, str | None] = {}
    for i, pid in enumerate(patient_ids):
        lab = labels[i]
        known = lab is not None and not (isinstance(lab, float) and np.isnan(lab))
        cur = patient_label.get(pid, -1)
        patient_label[pid] = max(cur, int(lab)) if known else cur  # type: ignore[arg-type]
        if pid not in patient_stratum:
            patient_stratum[pid] = None if strata is None else strata[i]
    groups: dict[tuple[int, str | None], list[str]] = defaultdict(list)
    for pid in sorted(patient_label):
        groups[(patient_label[pid], patient_stratum[pid])].append(pid)
    return {
        key: groups[key]
        for key in sorted(groups, key=lambda k: (k[0], "" if k[1] is None else str(k[1])))
    }


def assign_folds(
    patient_ids: Sequence[str],
    labels: Sequence[float | None],
    *,
    k: int,
    seed: int = 0,
    strata: Sequence[str | None] | None = None,
) -> list[int]:
    """Assign cases to ``k`` cross-validation folds (1..k), patient-level and stratified.

    Every case of a patient gets the patient's fold. Within each stratum (outcome, and
    ``strata`` when given) patients are shuffled and dealt to the folds in turn, the
    dealing carrying on from one stratum to the next, so fold sizes differ by at most
    one patient and each fold keeps the cohort's prevalence.

    Args:
        patient_ids: (N,) patient of each case.
        labels: (N,) outcome of each case (0/1, or None/NaN if unknown).
        k: number of folds, at least 2 and at most the number of patients.
        seed: random seed; the same inputs and seed give the same folds.
        strata: (N,) optional extra stratification key per case (e.g. site).

    Returns:
        (N,) fold number per case.

    >>> assign_folds(["a", "a", "b", "c", "d"], [1, 1, 0, 1, 0], k=2, seed=0)
    [1, 1, 1, 2, 2]
    """
    if len(labels) != len(patient_ids) or (strata is not None and len(strata) != len(patient_ids)):
        raise ValueError("patient_ids, labels and strata must have the same length")
    n_patients = len(set(patient_ids))
    if not 2 <= k <= n_patients:
        raise ConfigError(
            f"{k} folds for {n_patients} patients; use between 2 and the number of patients",
            field="folds",
        )
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    dealt = 0
    for members in _patient_strata(patient_ids, labels, strata).values():
        for idx in rng.permutation(len(members)):
            assignment[members[idx]] = dealt % k + 1
            dealt += 1
    return [assignment[pid] for pid in patient_ids]


def split_cohort(
    cohort: Cohort,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    by_site: bool = True,
    by_date: str | None = None,
) -> Cohort:
    """Return the cohort with every case's ``split`` filled in.

    Cases with a split in the manifest keep it, and so do the other cases of
    their patient; the remaining patients are split with :func:`assign_splits`, or with
    :func:`assign_splits_by_date` on the manifest column ``by_date``.

    Raises:
        CohortError: ``by_date`` is not a column of the manifest, or a case to split has
            no date there or one that is not a date.
    """
    fixed: dict[str, str] = {}
    for r in cohort.rows:
        if r.split is not None:
            fixed.setdefault(r.patient_id, r.split)
    todo = [r for r in cohort.rows if r.patient_id not in fixed]
    assigned: dict[str, str] = {}
    if todo and by_date is not None:
        splits = assign_splits_by_date(
            [r.patient_id for r in todo], _split_dates(cohort, todo, by_date), fractions=fractions
        )
        assigned = {r.case_id: s for r, s in zip(todo, splits, strict=True)}
    elif todo:
        splits = assign_splits(
            [r.patient_id for r in todo],
            [r.label for r in todo],
            fractions=fractions,
            seed=seed,
            strata=[r.site for r in todo] if by_site else None,
        )
        assigned = {r.case_id: s for r, s in zip(todo, splits, strict=True)}
    rows: list[CaseRow] = []
    for r in cohort.rows:
        split = fixed.get(r.patient_id) or assigned[r.case_id]
        assert split in SPLITS
        rows.append(r.model_copy(update={"split": split}))
    return cohort.with_rows(rows)


def _split_dates(cohort: Cohort, rows: Sequence[CaseRow], column: str) -> np.ndarray:
    """The ``column`` date of each row; every one needed (a temporal split orders them all)."""
    from clinfuse.errors import CohortError
    from clinfuse.evaluation.temporal import parse_dates

    if column not in cohort.columns:
        raise CohortError(
            f"split_by_date names {column!r}, which is not a column of the manifest",
            field="split_by_date",
            path=cohort.manifest_path,
            hint="name the manifest's date column (e.g. encounter_date) in data.split_by_date",
        )
    dates = parse_dates(
        [r.extra.get(column) for r in rows],
        [r.case_id for r in rows],
        column=column,
        path=cohort.manifest_path,
    )
    undated = [r.case_id for r, d in zip(rows, dates, strict=True) if np.isnat(d)]
    if undated:
        raise CohortError(
            f"{len(undated)} cases have no date for the temporal split (first: "
            f"{', '.join(undated[:3])})",
            case_id=undated[0],
            field=column,
            path=cohort.manifest_path,
            hint="fill in their dates, give them a split column, or drop data.split_by_date",
        )
    return dates
