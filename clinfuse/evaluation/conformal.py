"""Conformal prediction sets: which outcomes a case's risk leaves plausible, with a
guaranteed error rate.

Split conformal prediction (Vovk et al., *Algorithmic Learning in a Random World*, 2005;
Angelopoulos & Bates, 2023) turns a calibrated risk into a set of outcomes. Fitted on the
scored, labelled cases of an evaluation (cases the model did not train on), at level
``alpha`` it promises, for a new case exchangeable with them::

    P(true outcome ∈ set) ≥ 1 − alpha

Class-conditional ("Mondrian") sets, the default, keep that promise for events and
non-events separately — the missed-diagnosis rate among events is at most ``alpha`` however
rare they are — where marginal sets promise it only on average over the cohort. The score
of outcome 1 is ``1 − p`` and of outcome 0 is ``p``, so each set is a pair of risk cut-offs:

- outcome 1 (event) is in the set when ``p ≥ positive_from``,
- outcome 0 (non-event) is in the set when ``p ≤ negative_up_to``.

A case's set is ``positive`` ({1}), ``negative`` ({0}), ``uncertain`` ({0, 1}: the risk
rules out neither outcome at this level) or ``empty`` (neither: the risk is unlike both the
calibration events and non-events). With ``n_k`` calibration cases of an outcome, its
cut-off is the ``⌊(n_k + 1)·alpha⌋``-th most extreme of their risks; when that is 0 the
outcome is always in the set (too few cases to exclude it at this level).

The cut-offs depend only on the order of the risks, so any strictly increasing
recalibration of them leaves each case's set unchanged.

Under drift the promise can fail: new events may look less like the calibration events.
*Adaptive* conformal inference (Gibbs & Candès, NeurIPS 2021) moves the level as outcomes
come in. :func:`adaptive_replay` replays dated cases in order; after each case of outcome
``c``, that outcome's level moves by ``γ·(alpha_c − err)`` (``err`` 1 when the set missed
the outcome), and the cut-off follows from the same calibration risks. For every sequence
of cases, each outcome's long-run miss rate is then within ``(max(alpha_c, 1 − alpha_c) + γ)
/ (γ·T_c)`` of ``alpha_c`` after ``T_c`` cases of it, with no exchangeability assumed.

>>> sets = ConformalSets.fit(y, p, alpha=0.1)      # doctest: +SKIP
>>> sets.predict([0.02, 0.3, 0.9])                  # doctest: +SKIP
array(['negative', 'uncertain', 'positive'], dtype=object)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ConfigError

__all__ = [
    "ADAPTIVE_GAMMA",
    "SET_LABELS",
    "ConformalSets",
    "adapted_from_evaluation",
    "adaptive_replay",
    "alpha_sweep",
    "calibration_overlap",
    "conformal_from_evaluation",
    "coverage_by_group",
    "coverage_table",
    "labelled_calibration_cases",
]

SET_LABELS = ("negative", "positive", "uncertain", "empty")
"""A case's prediction set: {0}, {1}, {0, 1} or {}."""


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 0.5:
        raise ConfigError(
            f"alpha is {alpha}; use an error level in (0, 0.5), e.g. 0.1 for 90 % coverage",
            field="alpha",
        )
    return alpha


def _cutoff(risks: np.ndarray, alpha: float, *, upper: bool) -> float | None:
    """The conformal cut-off of one outcome's calibration risks (None: always included).

    ``upper=False`` (events, score ``1 − p``): the ``j``-th smallest risk, ``j = ⌊(n+1)α⌋``;
    ``upper=True`` (non-events, score ``p``): the ``j``-th largest.
    """
    n = len(risks)
    j = math.floor((n + 1) * alpha + 1e-12)  # (n + 1)·alpha may land a rounding below j
    if j < 1:
        return None
    ordered = np.sort(risks)
    return float(ordered[n - j] if upper else ordered[j - 1])


@dataclass(frozen=True)
class ConformalSets:
    """Fitted conformal prediction sets (see the module's docstring).

    Attributes:
        alpha: the error level (coverage ``1 − alpha``); with ``alpha_events``, that of
            non-events.
        mondrian: class-conditional cut-offs (coverage per outcome) or marginal ones.
        positive_from: outcome 1 is in a case's set when its risk is ``≥`` this (None:
            always).
        negative_up_to: outcome 0 is in the set when the risk is ``≤`` this (None: always).
        n_cases: calibration cases.
        n_events: calibration events.
        source: where the calibration cases came from (evaluation folder, model version).
        alpha_events: the error level of events when it differs from ``alpha`` (Mondrian
            sets only): a missed event may cost more than a non-event left uncertain.
        adapted: set by :func:`adapted_from_evaluation`: the cut-offs were moved to the
            levels an evaluation's adaptive replay ended at (its folder, ``levels``,
            ``gamma``, ``n_cases``); None for the sets as calibrated.
    """

    alpha: float
    mondrian: bool
    positive_from: float | None
    negative_up_to: float | None
    n_cases: int
    n_events: int
    source: dict[str, Any] = field(default_factory=dict)
    alpha_events: float | None = None
    adapted: dict[str, Any] | None = None

    @classmethod
    def fit(
        cls,
        y: Sequence[float] | np.ndarray,
        p: Sequence[float] | np.ndarray,
        *,
        alpha: float = 0.1,
        mondrian: bool = True,
        source: dict[str, Any] | None = None,
        alpha_events: float | None = None,
    ) -> ConformalSets:
        """Fit the cut-offs on calibration cases' outcomes ``y`` (0/1) and risks ``p``.

        Args:
            alpha_events: another error level for events than ``alpha`` (which then holds
                for non-events); class-conditional sets only.

        Raises:
            ConfigError: ``alpha`` outside (0, 0.5), outcomes other than 0/1, risks outside
                [0, 1] or missing, (Mondrian) no event or no non-event, or ``alpha_events``
                with marginal sets.
        """
        alpha = _check_alpha(alpha)
        if alpha_events is not None:
            alpha_events = _check_alpha(alpha_events)
            if not mondrian:
                raise ConfigError(
                    "a separate error level for events needs class-conditional sets",
                    field="alpha_events",
                    hint="drop --marginal, or drop --alpha-events",
                )
            if alpha_events == alpha:
                alpha_events = None
        y = np.asarray(y, dtype=float)
        p = np.asarray(p, dtype=float)
        if y.shape != p.shape or y.ndim != 1:
            raise ConfigError(f"outcomes {y.shape} and risks {p.shape} do not match")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ConfigError(
                "the calibration outcomes must be 0 or 1 (a missing outcome cannot calibrate)",
                field="label",
            )
        if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
            raise ConfigError(
                "the calibration risks must be probabilities in [0, 1]", field="p_fusion"
            )
        events = y == 1
        if mondrian:
            for what, sel in (("events", events), ("non-events", ~events)):
                if not sel.any():
                    raise ConfigError(
                        f"the calibration cases have no {what}: class-conditional sets need "
                        "both outcomes",
                        field="label",
                        hint="calibrate on a labelled cohort with events and non-events, or "
                        "ask for marginal sets",
                    )
            positive_from = _cutoff(
                p[events], alpha if alpha_events is None else alpha_events, upper=False
            )
            negative_up_to = _cutoff(p[~events], alpha, upper=True)
        else:
            if not len(y):
                raise ConfigError("no calibration cases", field="label")
            scores = np.where(events, 1.0 - p, p)
            q = _cutoff(scores, alpha, upper=True)  # the ⌈(n+1)(1−α)⌉-th smallest score
            positive_from = None if q is None else 1.0 - q
            negative_up_to = q
        return cls(
            alpha=alpha,
            mondrian=bool(mondrian),
            positive_from=positive_from,
            negative_up_to=negative_up_to,
            n_cases=len(y),
            n_events=int(events.sum()),
            source=dict(source or {}),
            alpha_events=alpha_events,
        )

    def contains(self, p: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether outcome 0 and outcome 1 are in each case's set: two (N,) bool arrays."""
        p = np.asarray(p, dtype=float)
        if self.positive_from is None:
            has1 = np.ones(p.shape, bool)
        elif self.mondrian or self.negative_up_to is None:
            has1 = p >= self.positive_from
        else:  # marginal: the score 1 − p against q itself (no rounding of 1 − q)
            has1 = 1.0 - p <= self.negative_up_to
        has0 = np.ones(p.shape, bool) if self.negative_up_to is None else p <= self.negative_up_to
        return has0, has1

    def predict(self, p: Sequence[float] | np.ndarray) -> np.ndarray:
        """Each case's set as one of :data:`SET_LABELS` (an object array).

        Raises:
            ConfigError: a missing risk or one outside [0, 1].
        """
        p = np.asarray(p, dtype=float)
        if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
            raise ConfigError("risks must be probabilities in [0, 1]", field="p_fusion")
        has0, has1 = self.contains(p)
        out = np.full(p.shape, "empty", dtype=object)
        out[has0 & ~has1] = "negative"
        out[has1 & ~has0] = "positive"
        out[has0 & has1] = "uncertain"
        return out

    @property
    def level(self) -> float:
        """The promised coverage, ``1 − alpha`` (of non-events, with ``alpha_events``)."""
        return 1.0 - self.alpha

    @property
    def levels(self) -> dict[str, float]:
        """The promised coverage of ``events`` and ``non_events`` (Mondrian), or
        ``overall`` (marginal)."""
        if not self.mondrian:
            return {"overall": self.level}
        events = self.alpha if self.alpha_events is None else self.alpha_events
        return {"events": 1.0 - events, "non_events": self.level}

    @property
    def title(self) -> str:
        """A short name for labels: ``90 % conformal set`` or ``conformal set (events
        95 %, non-events 80 %)``."""
        if self.alpha_events is None:
            return f"{100 * self.level:g} % conformal set"
        lv = self.levels
        return (
            f"conformal set (events {100 * lv['events']:g} %, "
            f"non-events {100 * lv['non_events']:g} %)"
        )

    def coverage_given_calibration(self, *, level: float = 0.95) -> dict[str, dict[str, Any]]:
        """How much the coverage depends on the calibration cases drawn.

        The promise ``≥ 1 − alpha`` is an average over calibration samples. For the cut-offs
        of one sample, the coverage of new cases is itself random: with ``n`` calibration
        cases of an outcome and ``l = ⌊(n + 1)·alpha⌋``, it follows Beta(n + 1 − l, l) for
        continuous risks (Vovk, ACML 2012; Angelopoulos & Bates 2023, §3.2). Reported per
        outcome (Mondrian) or overall (marginal): ``n``, the ``mean`` and the lower
        ``quantile`` that ``level`` of calibration samples of that size exceed (1 when no
        risk can exclude the outcome).
        """
        from scipy.stats import beta

        groups = (
            {"events": self.n_events, "non_events": self.n_cases - self.n_events}
            if self.mondrian
            else {"overall": self.n_cases}
        )
        out = {}
        alphas = {k: 1.0 - v for k, v in self.levels.items()}
        for name, n in groups.items():
            j = math.floor((n + 1) * alphas[name] + 1e-12)
            if j < 1:
                out[name] = {"n": n, "mean": 1.0, "quantile": 1.0, "level": level}
                continue
            dist = beta(n + 1 - j, j)
            out[name] = {
                "n": n,
                "mean": float(dist.mean()),
                "quantile": float(dist.ppf(1 - level)),
                "level": level,
            }
        return out

    def describe(self) -> str:
        """One sentence for reports and the app."""
        kind = "per outcome" if self.mondrian else "on average"
        pos = (
            "always"
            if self.positive_from is None
            else "never"
            if self.positive_from > 1
            else f"when the risk is ≥ {100 * self.positive_from:.1f} %"
        )
        neg = (
            "always"
            if self.negative_up_to is None
            else "never"
            if self.negative_up_to < 0
            else f"when the risk is ≤ {100 * self.negative_up_to:.1f} %"
        )
        name, low = min(self.coverage_given_calibration().items(), key=lambda kv: kv[1]["quantile"])
        name = name.replace("_", "-")
        head = (
            f"{100 * self.level:g} % conformal sets ({kind})"
            if self.alpha_events is None
            else f"Conformal sets covering {100 * self.levels['events']:g} % of events and "
            f"{100 * self.levels['non_events']:g} % of non-events"
        )
        if self.adapted:
            levels = self.adapted["levels"]
            return (
                f"{head}, calibrated on {self.n_cases} cases ({self.n_events} events) and "
                f"adapted to the outcomes of {self.adapted['n_cases']} later cases (levels "
                f"{levels['events']:.3f} for events, {levels['non_events']:.3f} for "
                f"non-events): the event is in a case's set {pos}, the non-event {neg}."
            )
        return (
            f"{head}, calibrated on {self.n_cases} "
            f"cases ({self.n_events} events): the event is in a case's set {pos}, the "
            f"non-event {neg}."
            + (
                f" With {low['n']} calibration {name if name != 'overall' else 'cases'}, 95 % "
                f"of calibration samples this size cover at least {100 * low['quantile']:.1f} % "
                f"of them (on average {100 * low['mean']:.1f} %)."
                if low["quantile"] < 1
                else ""
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus ``level`` and :meth:`coverage_given_calibration` (derived; not
        read back by :meth:`from_dict`)."""
        return asdict(self) | {
            "level": self.level,
            "levels": self.levels,
            "coverage_given_calibration": self.coverage_given_calibration(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalSets:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: a field missing or of the wrong type.
        """
        try:
            cut = {
                k: (None if data[k] is None else float(data[k]))
                for k in ("positive_from", "negative_up_to")
            }
            return cls(
                alpha=_check_alpha(data["alpha"]),
                mondrian=bool(data["mondrian"]),
                n_cases=int(data["n_cases"]),
                n_events=int(data["n_events"]),
                source=dict(data.get("source") or {}),
                alpha_events=None
                if data.get("alpha_events") is None
                else _check_alpha(data["alpha_events"]),
                adapted=None if data.get("adapted") is None else dict(data["adapted"]),
                **cut,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a conformal-set description: {e}") from e


def _evaluation_metrics(evaluation: Path) -> dict[str, Any]:
    """An evaluation folder's ``metrics.json``.

    Raises:
        ConfigError: it cannot be read, or is not a JSON object.
    """
    from clinfuse._files import read_json_object

    return read_json_object(
        evaluation / "metrics.json",
        "the evaluation's metrics.json",
        hint="pass the folder `clinfuse evaluate` wrote",
    )


def conformal_from_evaluation(
    evaluation: str | Path,
    model: str | Path,
    *,
    alpha: float = 0.1,
    mondrian: bool = True,
    alpha_events: float | None = None,
) -> ConformalSets:
    """Conformal sets for ``model`` calibrated on an evaluation of it (``clinfuse evaluate``).

    The evaluation's ``predictions.csv`` (outcome ``label`` and fused risk ``p_fusion`` of
    each scored case) calibrates the sets; its ``metrics.json`` must record this model
    version (a run's or a fold ensemble's; an evaluation of the source of a recalibrated
    model is another model's). Evaluate on labelled cases the model did not train on —
    e.g. the test split (``clinfuse evaluate RUN MANIFEST --split test``) or a site's
    recent cases.

    Raises:
        ConfigError: no evaluation there, one of another model version, one holding cases
            the model was developed on (``case_mix.n_overlap``: its training or validation
            split, a cross-validation's cohort), or unusable outcomes.
    """
    from clinfuse.scored import evaluates_model, model_version

    evaluation, model = Path(evaluation), Path(model)
    if not ((model / "model" / "model.json").is_file() or (model / "crossval.json").is_file()):
        raise ConfigError(
            "not a run folder (model/model.json) or a cross-validation folder (crossval.json)",
            path=model,
            hint="pass the folder `clinfuse train` or `clinfuse crossval` wrote",
        )
    metrics_path, table = evaluation / "metrics.json", evaluation / "predictions.csv"
    if not (metrics_path.is_file() and table.is_file()):
        raise ConfigError(
            "not an evaluation folder: metrics.json and predictions.csv are needed",
            path=evaluation,
            hint=f"evaluate the model on labelled cases it did not train on: `clinfuse evaluate "
            f"{model} MANIFEST --out DIR`, then pass DIR",
        )
    metrics = _evaluation_metrics(evaluation)
    if metrics.get("crossval"):
        raise ConfigError(
            "this is the cross-validation's own evaluation: its out-of-fold risks come from "
            "single fold models, not from the ensemble, and every case trained the others",
            path=evaluation,
            hint=f"evaluate the ensemble on new labelled cases: `clinfuse evaluate {model} "
            "MANIFEST --out DIR`",
        )
    if not evaluates_model(model, metrics.get("run") or {}):
        raise ConfigError(
            "this evaluation is of another model (or another version of it)",
            path=evaluation,
            hint=f"evaluate this model: `clinfuse evaluate {model} MANIFEST --out DIR`",
        )
    overlap = int((metrics.get("case_mix") or {}).get("n_overlap") or 0)
    if overlap:
        raise ConfigError(
            f"{overlap} of this evaluation's cases trained or tuned the model (its training "
            "and validation splits, or a cross-validation's cohort): their risks are "
            "in-sample, and sets calibrated on them would be too narrow",
            path=evaluation,
            hint=f"evaluate on held-out cases — `clinfuse evaluate {model} MANIFEST --split "
            "test --out DIR`, or a new cohort — and pass DIR",
        )
    import pandas as pd

    try:
        frame = pd.read_csv(table, usecols=["label", "p_fusion"])
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the evaluation's predictions: {e}", path=table) from e
    frame = frame[frame["label"].notna()]
    split = (metrics.get("participants") or {}).get("split")
    source = {
        "evaluation": str(evaluation.expanduser().resolve()),
        "manifest": (metrics.get("participants") or {}).get("manifest"),
        "split": split,
        "model_version": model_version(model),
    }
    try:
        return ConformalSets.fit(
            frame["label"].to_numpy(float),
            frame["p_fusion"].to_numpy(float),
            alpha=alpha,
            mondrian=mondrian,
            source=source,
            alpha_events=alpha_events,
        )
    except ConfigError as e:
        raise ConfigError(e.reason, field=e.field, path=table, hint=e.hint) from e


def calibration_overlap(
    sets: ConformalSets, manifest: str | Path | None, case_ids: Sequence[str] | Any
) -> int:
    """How many of ``case_ids`` (cases of ``manifest``) calibrated ``sets``: the same manifest
    as the calibrating evaluation's and a case id among its scored cases. Their sets are not
    predictions for new cases.

    Raises:
        ConfigError: the calibrating evaluation's predictions can no longer be read.
    """
    source = sets.source
    if not manifest or not source.get("manifest") or not source.get("evaluation"):
        return 0
    if Path(source["manifest"]).resolve() != Path(manifest).resolve():
        return 0
    calibrating = set(_calibration_cases(sets, ["case_id"])["case_id"])
    return sum(1 for c in case_ids if str(c) in calibrating)


def _calibration_cases(sets: ConformalSets, columns: list[str]) -> Any:
    """``columns`` of the predictions table of the evaluation that calibrated ``sets``.

    Raises:
        ConfigError: it can no longer be read.
    """
    import pandas as pd

    table = Path(sets.source["evaluation"]) / "predictions.csv"
    try:
        return pd.read_csv(table, usecols=columns, dtype={"case_id": str})
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot read the predictions that calibrated the conformal sets: {e}", path=table
        ) from e


def coverage_table(
    y: Sequence[float] | np.ndarray,
    sets: Sequence[str] | np.ndarray,
    *,
    level: float = 0.95,
) -> dict[str, Any]:
    """How conformal sets fared on labelled cases: coverage overall and per outcome (with
    Wilson intervals), and how often each kind of set was given.

    Args:
        y: (N,) 0/1 outcomes.
        sets: (N,) sets from :meth:`ConformalSets.predict`.
        level: confidence level of the intervals.

    Returns:
        ``coverage`` (overall, ``events``, ``non_events``: ``value``, ``ci_low``,
        ``ci_high``, ``n``), ``sets`` (count and share of each label), ``singletons``
        (share of cases with one outcome; the error rate among them, with interval).
    """
    from clinfuse.evaluation.utility import wilson_interval

    y = np.asarray(y, dtype=float)
    sets = np.asarray(sets, dtype=object)
    covered = np.where(
        y == 1, np.isin(sets, ("positive", "uncertain")), np.isin(sets, ("negative", "uncertain"))
    )

    def share(hit: np.ndarray) -> dict[str, Any]:
        k, n = int(hit.sum()), len(hit)
        low, high = wilson_interval(k, n, level=level)
        if not n:
            return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
        return {"value": k / n, "ci_low": low, "ci_high": high, "n": n}

    single = np.isin(sets, ("positive", "negative"))
    return {
        "coverage": {
            "overall": share(covered),
            "events": share(covered[y == 1]),
            "non_events": share(covered[y == 0]),
        },
        "sets": {
            label: {"n": int((sets == label).sum()), "share": float((sets == label).mean())}
            for label in SET_LABELS
        }
        if len(sets)
        else {label: {"n": 0, "share": None} for label in SET_LABELS},
        "singletons": {
            "share": float(single.mean()) if len(sets) else None,
            "error": share(~covered[single]),
        },
    }


def labelled_calibration_cases(sets: ConformalSets) -> Any:
    """The outcomes (``label``) and risks (``p_fusion``) of the labelled cases of the
    evaluation that calibrated ``sets``.

    Raises:
        ConfigError: it can no longer be read.
    """
    cal = _calibration_cases(sets, ["label", "p_fusion"])
    return cal[cal["label"].notna()]


def coverage_by_group(
    y: Sequence[float] | np.ndarray,
    sets: Sequence[str] | np.ndarray,
    groups: Sequence[Any],
    *,
    min_size: int = 30,
    min_events: int = 5,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """:func:`coverage_table`'s coverage of events and non-events within each group (a
    subgroup column's values or the sites): the promise is for cases like the calibration
    ones as a whole, and a group the calibration cases under-represent can fall short.

    Groups with fewer than ``min_size`` cases or ``min_events`` events or non-events are
    suppressed (as in the subgroup tables). Each row: ``group``, ``n``, ``n_events``,
    ``suppressed``, ``events`` and ``non_events`` (coverage with Wilson interval) and
    ``singletons`` (share of cases given one outcome).
    """
    from clinfuse.evaluation.subgroups import group_labels

    y = np.asarray(y, dtype=float)
    sets = np.asarray(sets, dtype=object)
    labels = group_labels(groups)
    rows = []
    for name in sorted(set(labels)):
        sel = labels == name
        n, ev = int(sel.sum()), int(y[sel].sum())
        row: dict[str, Any] = {"group": name, "n": n, "n_events": ev}
        if n < min_size or ev < min_events or n - ev < min_events:
            rows.append(row | {"suppressed": True})
            continue
        table = coverage_table(y[sel], sets[sel], level=level)
        rows.append(
            row
            | {
                "suppressed": False,
                "events": table["coverage"]["events"],
                "non_events": table["coverage"]["non_events"],
                "singletons": table["singletons"]["share"],
            }
        )
    return rows


SWEEP_ALPHAS = (0.05, 0.1, 0.2)
"""The error levels :func:`alpha_sweep` compares by default."""


def alpha_sweep(
    sets: ConformalSets,
    y: Sequence[float] | np.ndarray,
    p: Sequence[float] | np.ndarray,
    *,
    alphas: Sequence[float] = SWEEP_ALPHAS,
    level: float = 0.95,
    calibration: Any = None,
) -> list[dict[str, Any]] | None:
    """The same calibration cases at other error levels, applied to ``(y, p)``: what each
    ``alpha`` would have promised and given here — coverage of events and non-events, the
    share of single-outcome sets and their error rate. For choosing ``alpha``: a smaller
    one promises more and settles fewer cases.

    The calibration cases are ``calibration`` (:func:`labelled_calibration_cases`), or read
    again from ``sets.source["evaluation"]`` (None when that is not recorded). Class-conditional or marginal as ``sets``; one ``alpha`` for both
    outcomes.

    Raises:
        ConfigError: the calibrating evaluation's predictions can no longer be read.
    """
    if calibration is None:
        if not sets.source.get("evaluation"):
            return None
        calibration = labelled_calibration_cases(sets)
    cal = calibration
    rows = []
    for alpha in alphas:
        other = ConformalSets.fit(
            cal["label"].to_numpy(float),
            cal["p_fusion"].to_numpy(float),
            alpha=alpha,
            mondrian=sets.mondrian,
        )
        table_here = coverage_table(y, other.predict(p), level=level)
        rows.append(
            {
                "alpha": float(alpha),
                "positive_from": other.positive_from,
                "negative_up_to": other.negative_up_to,
                "events": table_here["coverage"]["events"],
                "non_events": table_here["coverage"]["non_events"],
                "singletons": table_here["singletons"]["share"],
                "singleton_error": table_here["singletons"]["error"]["value"],
            }
        )
    return rows


ADAPTIVE_GAMMA = 0.005
"""The step of :func:`adaptive_replay` (Gibbs & Candès's choice for their experiments)."""


def _moving_cutoff(ordered: np.ndarray, level: float, *, upper: bool) -> float:
    """:func:`_cutoff` at any level on sorted risks: ``-inf``/``inf`` (the outcome always in
    the set) below the first rank, ``inf``/``-inf`` (never) beyond the last."""
    n = len(ordered)
    j = math.floor((n + 1) * level + 1e-12)
    if j < 1:
        return np.inf if upper else -np.inf
    if j > n:
        return -np.inf if upper else np.inf
    return float(ordered[n - j] if upper else ordered[j - 1])


def adaptive_replay(
    sets: ConformalSets,
    y_calibration: Sequence[float] | np.ndarray,
    p_calibration: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    p: Sequence[float] | np.ndarray,
    *,
    gamma: float = ADAPTIVE_GAMMA,
) -> dict[str, Any]:
    """Class-conditional adaptive conformal sets over cases in the order given (see the
    module's docstring): each case's set is made at the current levels, then its outcome
    updates that outcome's level.

    Args:
        sets: the class-conditional sets whose levels the replay starts from and aims at.
        y_calibration, p_calibration: the cases that calibrated ``sets``.
        y, p: the replayed cases' outcomes and risks, in time order.
        gamma: the step (0: the static sets).

    Returns:
        ``gamma``, ``sets`` (each case's set, an object array of :data:`SET_LABELS`),
        ``levels`` (the levels each case's set was made at: ``events`` and ``non_events``,
        (N,) arrays), ``final`` (the levels after the last case) and ``bound`` (per outcome,
        the guaranteed distance of its miss rate from its target, None without such cases).

    Raises:
        ConfigError: marginal sets, or a negative ``gamma``.
    """
    if not sets.mondrian:
        raise ConfigError(
            "adaptive sets are made per outcome here: they need class-conditional sets",
            field="conformal",
            hint="drop --marginal",
        )
    if not gamma >= 0:
        raise ConfigError(f"gamma is {gamma}; use a step of 0 or more", field="gamma")
    y_cal = np.asarray(y_calibration, dtype=float)
    p_cal = np.asarray(p_calibration, dtype=float)
    events_cal = np.sort(p_cal[y_cal == 1])
    non_events_cal = np.sort(p_cal[y_cal == 0])
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    target = {  # error levels: the share of each outcome's cases a set may miss
        "events": sets.alpha if sets.alpha_events is None else sets.alpha_events,
        "non_events": sets.alpha,
    }
    level = dict(target)
    trace = {k: np.empty(len(y)) for k in level}
    labels = np.empty(len(y), dtype=object)
    for t, (yt, pt) in enumerate(zip(y, p, strict=True)):
        trace["events"][t], trace["non_events"][t] = level["events"], level["non_events"]
        has1 = pt >= _moving_cutoff(events_cal, level["events"], upper=False)
        has0 = pt <= _moving_cutoff(non_events_cal, level["non_events"], upper=True)
        labels[t] = SET_LABELS[(2 if has0 else 1) if has1 else (0 if has0 else 3)]
        key = "events" if yt == 1 else "non_events"
        missed = float(not (has1 if yt == 1 else has0))
        level[key] += gamma * (target[key] - missed)
    counts = {"events": int((y == 1).sum()), "non_events": int((y == 0).sum())}
    bound = {
        k: (max(target[k], 1 - target[k]) + gamma) / (gamma * counts[k])
        if gamma > 0 and counts[k]
        else None
        for k in counts
    }
    return {"gamma": gamma, "sets": labels, "levels": trace, "final": level, "bound": bound}


_NEVER_EVENT = float(np.nextafter(1.0, 2.0))  # a positive_from no risk reaches
_NEVER_NON_EVENT = -1.0  # a negative_up_to no risk is under


def _same_sets(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("alpha", "alpha_events", "mondrian", "positive_from", "negative_up_to", "n_cases")
    return all(a.get(k) == b.get(k) for k in keys) and (a.get("source") or {}).get(
        "evaluation"
    ) == (b.get("source") or {}).get("evaluation")


def adapted_from_evaluation(
    sets: ConformalSets, feedback: str | Path, model: str | Path
) -> ConformalSets:
    """``sets`` with their cut-offs moved to the levels where an evaluation's adaptive
    replay ended (:func:`adaptive_replay`; ``clinfuse evaluate MODEL RECENT --conformal EVAL
    --time-column COL``): the sets to use on the next cases, once recent outcomes are known.

    Raises:
        ConfigError: not an evaluation of this model, no adaptive replay in it, or a replay
            that started from other sets (another calibrating evaluation or alpha).
    """
    from clinfuse.scored import evaluates_model

    feedback = Path(feedback)
    metrics = _evaluation_metrics(feedback)
    if not evaluates_model(model, metrics.get("run") or {}):
        raise ConfigError(
            "this evaluation is of another model (or another version of it)", path=feedback
        )
    block = metrics.get("conformal") or {}
    replay = block.get("adaptive")
    if not replay:
        raise ConfigError(
            "this evaluation has no adaptive replay of conformal sets",
            path=feedback,
            hint=f"evaluate recent labelled cases with `clinfuse evaluate {model} MANIFEST "
            "--conformal EVAL --time-column COL --out DIR`, then pass DIR",
        )
    if not _same_sets(block.get("fitted") or {}, sets.to_dict()):
        raise ConfigError(
            "its adaptive replay started from other conformal sets (another calibrating "
            "evaluation, alpha or marginal setting)",
            path=feedback,
            hint="give --conformal, --alpha and --alpha-events as for that evaluation",
        )
    cal = labelled_calibration_cases(sets)
    y, p = cal["label"].to_numpy(float), cal["p_fusion"].to_numpy(float)
    levels = replay["final_levels"]
    positive = _moving_cutoff(np.sort(p[y == 1]), levels["events"], upper=False)
    negative = _moving_cutoff(np.sort(p[y == 0]), levels["non_events"], upper=True)
    from dataclasses import replace

    return replace(
        sets,
        positive_from=None
        if positive == -np.inf
        else _NEVER_EVENT
        if positive == np.inf
        else positive,
        negative_up_to=None
        if negative == np.inf
        else _NEVER_NON_EVENT
        if negative == -np.inf
        else negative,
        adapted={
            "evaluation": str(feedback.expanduser().resolve()),
            "levels": dict(levels),
            "gamma": replay["gamma"],
            "n_cases": replay["n"],
        },
    )
