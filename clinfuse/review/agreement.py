"""Agreement statistics for adjudication studies: Cohen's kappa.

Two questions, each on every case both raters judged:

- **reviewer vs reviewer**: do two reviewers give the same decision
  (``agree`` / ``disagree`` / ``uncertain``, three categories)?
- **reviewer vs model**: does the reviewer's label match the model's? The
  model's label is ``risk shown ≥ threshold`` (both as stored with the review).
  The reviewer's label is the corrected label when given, else the model's label
  for ``agree`` and its opposite for ``disagree``; ``uncertain`` reviews without a
  corrected label carry no label and are left out (counted in ``n_excluded``).

Each reviewer's newest review per case counts. Kappa is
``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e`` the
agreement expected from the two raters' marginal frequencies; it is undefined
(None) when ``p_e = 1`` (both raters always gave the same single category).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from clinfuse.review.store import Review

__all__ = [
    "agreement_summary",
    "cohen_kappa",
    "reviewer_label",
    "reviewer_model_agreement",
    "reviewer_pair_agreement",
]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's (unweighted) kappa of two raters' categorical ratings of the same items.

    Args:
        a, b: ratings, one per item, in the same item order.

    Returns:
        Kappa in [-1, 1]; None when there are no items or chance agreement is 1.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.

    Example:
        >>> cohen_kappa(["agree", "agree", "disagree"], ["agree", "disagree", "disagree"])
        0.4
    """
    if len(a) != len(b):
        raise ValueError(f"ratings differ in length: {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    cats = sorted({*a, *b}, key=str)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b, strict=True):
        table[index[x], index[y]] += 1
    p_o = float(np.trace(table)) / n
    p_e = float(table.sum(1) @ table.sum(0)) / n**2
    if np.isclose(p_e, 1.0):
        return None
    return round((p_o - p_e) / (1.0 - p_e), 12)


def reviewer_label(review: Review) -> int | None:
    """The outcome label a review implies (see the module docstring), or None."""
    if review.corrected_label is not None:
        return int(review.corrected_label)
    model = int(review.risk_shown >= review.threshold)
    if review.decision == "agree":
        return model
    if review.decision == "disagree":
        return 1 - model
    return None


def _latest(reviews: Sequence[Review]) -> dict[tuple[str, str], Review]:
    latest: dict[tuple[str, str], Review] = {}
    for r in sorted(reviews, key=lambda r: r.review_id):
        latest[(r.reviewer, r.case_id)] = r
    return latest


def reviewer_pair_agreement(reviews: Sequence[Review]) -> list[dict[str, Any]]:
    """Kappa and raw agreement of decisions for every pair of reviewers with shared cases."""
    latest = _latest(reviews)
    by_reviewer: dict[str, dict[str, str]] = {}
    for (who, case), r in latest.items():
        by_reviewer.setdefault(who, {})[case] = r.decision
    rows = []
    for r1, r2 in combinations(sorted(by_reviewer), 2):
        shared = sorted(set(by_reviewer[r1]) & set(by_reviewer[r2]))
        a = [by_reviewer[r1][c] for c in shared]
        b = [by_reviewer[r2][c] for c in shared]
        rows.append(_pair_row(r1, r2, a, b))
    return rows


def _pair_row(rater_a: str, rater_b: str, a: Sequence[Any], b: Sequence[Any]) -> dict[str, Any]:
    """One agreement row: cases rated by both, percent agreement, Cohen's kappa."""
    return {
        "rater_a": rater_a,
        "rater_b": rater_b,
        "n_cases": len(a),
        "percent_agreement": (
            None if not a else 100.0 * sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
        ),
        "kappa": cohen_kappa(a, b),
    }


def reviewer_model_agreement(reviews: Sequence[Review]) -> list[dict[str, Any]]:
    """Kappa between each reviewer's implied label and the model's thresholded label."""
    latest = _latest(reviews)
    per: dict[str, tuple[list[int], list[int], int]] = {}
    for (who, _case), r in sorted(latest.items()):
        human, model, excluded = per.setdefault(who, ([], [], 0))
        label = reviewer_label(r)
        if label is None:
            per[who] = (human, model, excluded + 1)
            continue
        human.append(label)
        model.append(int(r.risk_shown >= r.threshold))
    return [
        {**_pair_row(who, "model", human, model), "n_excluded": excluded}
        for who, (human, model, excluded) in sorted(per.items())
    ]


def agreement_summary(reviews: Sequence[Review]) -> dict[str, list[dict[str, Any]]]:
    """``{"reviewers": pairwise rows, "model": reviewer-vs-model rows}``."""
    return {
        "reviewers": reviewer_pair_agreement(reviews),
        "model": reviewer_model_agreement(reviews),
    }
