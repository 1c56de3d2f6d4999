"""Cohen's kappa against scikit-learn, and the reviewer-vs-model label rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from clinfuse.review.agreement import (
    agreement_summary,
    cohen_kappa,
    reviewer_label,
)
from clinfuse.review.store import ReviewStore


@pytest.mark.parametrize("seed", range(6))
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    cats = ["agree", "disagree", "uncertain"][: 2 + seed % 2]
    a = rng.choice(cats, size=30 + seed)
    b = np.where(rng.random(len(a)) < 0.6, a, rng.choice(cats, size=len(a)))
    assert cohen_kappa(list(a), list(b)) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_kappa_edge_cases():
    assert cohen_kappa([], []) is None
    # one single category for both raters: chance agreement 1, kappa undefined (sklearn: nan)
    assert cohen_kappa(["agree"] * 4, ["agree"] * 4) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that kappa is undefined here
        assert math.isnan(cohen_kappa_score(["agree"] * 4, ["agree"] * 4))
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(
        cohen_kappa_score([0, 1, 0, 1], [1, 0, 1, 0])
    )
    with pytest.raises(ValueError, match="length"):
        cohen_kappa([1], [1, 0])


def test_reviewer_and_model_agreement_from_the_store(review_db):
    store = ReviewStore(review_db)
    plan = [  # case, risk, alice, bob
        ("c1", 0.9, "agree", "agree"),
        ("c2", 0.2, "agree", "disagree"),
        ("c3", 0.7, "disagree", "disagree"),
        ("c4", 0.1, "uncertain", "agree"),
        ("c5", 0.6, "agree", "uncertain"),
    ]
    for case, risk, a, b in plan:
        for who, decision in (("alice", a), ("bob", b)):
            store.add_review(
                case_id=case,
                reviewer=who,
                decision=decision,
                risk_shown=risk,
                threshold=0.5,
                model_version="v1",
            )
    # alice changes her mind on c4: only her latest review counts
    store.add_review(
        case_id="c4",
        reviewer="alice",
        decision="uncertain",
        corrected_label=1,
        risk_shown=0.1,
        threshold=0.5,
        model_version="v1",
    )
    summary = agreement_summary(store.reviews())
    pair = summary["reviewers"][0]
    alice = ["agree", "agree", "disagree", "uncertain", "agree"]
    bob = ["agree", "disagree", "disagree", "agree", "uncertain"]
    assert (pair["rater_a"], pair["rater_b"], pair["n_cases"]) == ("alice", "bob", 5)
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(alice, bob))
    assert pair["percent_agreement"] == pytest.approx(40.0)
    model = {r["rater_a"]: r for r in summary["model"]}
    # model labels (risk >= 0.5): c1 1, c2 0, c3 1, c4 0, c5 1
    # alice: agree→1, agree→0, disagree→0, corrected 1, agree→1
    assert model["alice"]["n_cases"] == 5 and model["alice"]["n_excluded"] == 0
    assert model["alice"]["kappa"] == pytest.approx(
        cohen_kappa_score([1, 0, 0, 1, 1], [1, 0, 1, 0, 1])
    )
    # bob: agree→1, disagree→1, disagree→0, agree→0, uncertain → left out
    assert model["bob"]["n_cases"] == 4 and model["bob"]["n_excluded"] == 1
    assert model["bob"]["kappa"] == pytest.approx(cohen_kappa_score([1, 1, 0, 0], [1, 0, 1, 0]))
    last = store.reviews(reviewer="alice")[-1]
    assert reviewer_label(last) == 1
