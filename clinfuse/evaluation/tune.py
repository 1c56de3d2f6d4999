"""Choosing hyperparameters by cross-validation, and nested cross-validation of the choice
(TRIPOD+AI 12c: every model-building step, hyperparameter tuning included, is described
and internally validated).

:func:`tune` cross-validates every candidate config of a search space on the same
patient-level folds (:func:`~clinfuse.evaluation.crossval.cross_validate`) and chooses the
one with the best pooled out-of-fold metric. The chosen trial's figure is optimistic: the
choice among many fits the noise of those very folds. With ``outer``, the whole procedure
— search, choice, training — is cross-validated itself: each outer fold is scored by a
model whose config was chosen by a search on the other folds' cases only, so the held-out
fold plays no part in the choice (nested cross-validation; Varma & Simon, BMC
Bioinformatics 2006;7:91). The chosen trial's figure minus the nested one is the optimism of
the choice.

The tuning folder::

    TUNE/
      tuning.json        plan, search space, every trial's figures, the choice and the
                         nested estimate (written last: marks it finished)
      space.yaml         the search space as given
      config.yaml        the base config the candidates change
      best_config.yaml   base config + the chosen values (`clinfuse train --config` it)
      trials.csv         one row per trial: its values, the metric pooled and per fold,
                         the paired per-fold difference from the chosen trial
      figures/trials.png each trial's metric, pooled and per fold, and the nested estimate
      trials/trial_001/  each trial's cross-validation folder (crossval.json, per_fold.csv,
                         evaluation/ with its report and out-of-fold predictions); the fold
                         models are not kept
      nested/            with ``outer``: a cross-validation folder whose fold k was trained
                         with the config chosen in nested_search/outer_k/
      nested_search/outer_1/trial_001/ ...

It is written as ``TUNE.partial`` and renamed when complete; ``resume=True`` continues an
interrupted one (finished trials are kept, an interrupted trial continues its folds).

The search space (YAML, or the same mapping in Python)::

    search: grid          # every combination of the lists (default); or random
    trials: 20            # random: how many draws
    seed: 0               # random: the draws' seed
    params:               # dotted config fields (docs/configuration.md)
      training.lr: [1.0e-3, 3.0e-4]
      fusion.strategy: [late, intermediate]
      encoders.tabular.hidden: [[16], [64, 64]]
      training.weight_decay: {low: 1.0e-5, high: 1.0e-2, log: true}   # random only
    halving: {factor: 3, min_epochs: 2}   # optional: successive halving (:class:`Halving`)

With halving the trials live in ``trials/rung_r/trial_NNN``: every candidate in rung 1 with
``min_epochs``, the best third in rung 2 with three times the epochs, and so on up to the
config's ``training.epochs``; the choice is made in the last rung.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from clinfuse import __version__
from clinfuse._files import publish, write_text_atomic
from clinfuse.errors import ClinFuseError, ConfigError

__all__ = [
    "METRICS",
    "SCHEMA",
    "Halving",
    "Range",
    "SearchSpace",
    "TuningResult",
    "candidate_config",
    "read_space",
    "trial_figures",
    "tune",
]

SCHEMA = "clinfuse.tuning.v1"

METRICS: dict[str, bool] = {"auroc": True, "log_loss": False, "brier": False}
"""Metric name → whether higher is better."""

MAX_GRID = 500
"""The most combinations a grid may have (a random search samples a larger space)."""

NOT_HYPERPARAMETERS = {
    "data.target": "it changes the outcome, so the trials would not be comparable",
    "data.split_by_date": "cross-validation deals patients to folds at random",
    "data.allow_external_paths": "it changes which files may be read, not the model",
    "training.device": "it chooses the hardware, not the model",
    "training.devices": "it chooses the hardware, not the model",
    "training.num_nodes": "it chooses the hardware, not the model",
    "training.strategy": "it chooses the hardware, not the model",
    "training.cache_dir": "it chooses where the cache lives, not the model",
}

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Range:
    """A numeric range drawn from by a random search.

    Attributes:
        low, high: the bounds (``low < high``).
        log: draw uniformly on the log scale (``low > 0``): learning rates, weight decay.
        integer: round the draw to an integer (both bounds included).
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def draw(self, rng: np.random.Generator) -> float | int:
        if self.integer:
            lo, hi = math.ceil(self.low), math.floor(self.high)
            if self.log:
                value = math.exp(rng.uniform(math.log(lo - 0.5), math.log(hi + 0.5)))
                return int(min(hi, max(lo, round(value))))
            return int(rng.integers(lo, hi + 1))
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def as_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "integer": self.integer}


@dataclass(frozen=True)
class Halving:
    """Successive halving: every candidate is cross-validated with few epochs, the best
    ``1/factor`` go on with ``factor`` times as many, until the config's full epochs; the
    choice is made among the trials of that last rung (Jamieson & Talwalkar, AISTATS 2016;
    scikit-learn's ``HalvingGridSearchCV``).

    Attributes:
        factor: how many candidates one survivor stands for, and how many times the epochs
            grow from one rung to the next (2 or more).
        min_epochs: the epochs of the first rung.
    """

    factor: int = 3
    min_epochs: int = 1

    def rungs(self, n_candidates: int, max_epochs: int) -> list[tuple[int, int]]:
        """``(trials, epochs)`` of each rung: the last one trains with ``max_epochs``."""
        out: list[tuple[int, int]] = []
        n, epochs = n_candidates, self.min_epochs
        while True:
            epochs = min(epochs, max_epochs)
            out.append((n, epochs))
            if epochs >= max_epochs:
                return out
            n = max(1, math.ceil(n / self.factor))
            epochs = max_epochs if n == 1 else epochs * self.factor  # one left: its full run

    def as_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "min_epochs": self.min_epochs}


@dataclass(frozen=True)
class SearchSpace:
    """The candidate configs of a search.

    Attributes:
        params: dotted config field → a list of values, or a :class:`Range` (random search).
        search: ``grid`` (every combination of the lists) or ``random`` (``trials`` draws).
        trials: the number of draws of a random search.
        seed: the seed of the draws.
        halving: successive halving (None: every candidate gets the full epochs).
    """

    params: dict[str, list[Any] | Range]
    search: str = "grid"
    trials: int | None = None
    seed: int = 0
    halving: Halving | None = None

    def candidates(self) -> list[dict[str, Any]]:
        """The candidates' values, in trial order (a random search's repeated draws once)."""
        keys = list(self.params)
        if self.search == "grid":
            lists = [self.params[k] for k in keys]
            return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]  # type: ignore[arg-type]
        rng = np.random.default_rng(self.seed)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(int(self.trials or 0)):
            values: dict[str, Any] = {}
            for k in keys:
                spec = self.params[k]
                if isinstance(spec, Range):
                    values[k] = spec.draw(rng)
                else:
                    values[k] = spec[int(rng.integers(len(spec)))]
            key = json.dumps(values, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(values)
        return out

    def as_dict(self) -> dict[str, Any]:
        out = {
            "search": self.search,
            "trials": self.trials,
            "seed": self.seed,
            "params": {
                k: v.as_dict() if isinstance(v, Range) else list(v) for k, v in self.params.items()
            },
        }
        if self.halving is not None:
            out["halving"] = self.halving.as_dict()
        return out


def read_space(source: str | Path | Mapping[str, Any]) -> SearchSpace:
    """Read and check a search space (a YAML file, or the mapping itself).

    Raises:
        ConfigError: not YAML, an unknown key, an empty or malformed parameter, a range in a
            grid search, a field that is not a hyperparameter, or a grid over
            :data:`MAX_GRID` combinations. The message names the parameter.
    """
    path: Path | None = None
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        from clinfuse.config import read_yaml

        path = Path(source)
        data = read_yaml(path, "search space")

    def bad(msg: str, name: str, hint: str | None = None) -> ConfigError:
        return ConfigError(
            msg, field=name, path=path, hint=hint or "see docs/evaluation.md, 'clinfuse tune'"
        )

    if not isinstance(data, dict):
        raise bad("the search space must be a mapping with `params`", "params")
    unknown = sorted(set(data) - {"search", "trials", "seed", "params", "halving"})
    if unknown:
        raise bad(
            f"unknown key(s) {unknown} in the search space; use search, trials, seed, params, "
            "halving",
            unknown[0],
        )
    search = data.get("search", "grid")
    if search not in ("grid", "random"):
        raise bad(f"search is {search!r}; use grid or random", "search")
    trials = data.get("trials")
    if search == "random":
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise bad(f"trials is {trials!r}; a random search needs trials: 1 or more", "trials")
    elif trials is not None:
        raise bad(
            "trials is for a random search; a grid tries every combination",
            "trials",
            hint="remove trials, or set search: random",
        )
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad(f"seed is {seed!r}; use an integer", "seed")
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise bad("params is empty: name at least one config field to tune", "params")

    parsed: dict[str, list[Any] | Range] = {}
    for name, spec in params.items():
        name = str(name)
        field_name = f"params.{name}"
        if name in NOT_HYPERPARAMETERS:
            raise bad(f"{name} cannot be tuned: {NOT_HYPERPARAMETERS[name]}", field_name)
        if isinstance(spec, list):
            if not spec:
                raise bad(f"{name} has no values to try", field_name)
            parsed[name] = spec
        elif isinstance(spec, dict):
            if search == "grid":
                raise bad(
                    f"{name} is a range; a grid search needs a list of values",
                    field_name,
                    hint="list the values, or set search: random",
                )
            extra = sorted(set(spec) - {"low", "high", "log", "integer"})
            bounds = [spec.get("low"), spec.get("high")]
            if extra or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in bounds
            ):
                raise bad(
                    f"{name}: a range is {{low: number, high: number, log: bool, "
                    f"integer: bool}}; got {spec}",
                    field_name,
                )
            lo, hi = float(bounds[0]), float(bounds[1])  # type: ignore[arg-type]
            log, integer = bool(spec.get("log", False)), bool(spec.get("integer", False))
            if not lo < hi:
                raise bad(f"{name}: low ({lo}) must be below high ({hi})", field_name)
            if log and lo <= 0:
                raise bad(f"{name}: a log range needs low > 0, got {lo}", field_name)
            if integer and math.ceil(lo) > math.floor(hi):
                raise bad(f"{name}: no integer lies in [{lo}, {hi}]", field_name)
            parsed[name] = Range(lo, hi, log=log, integer=integer)
        else:
            raise bad(
                f"{name} is {spec!r}; give a list of values (or a range for search: random)",
                field_name,
                hint=f"e.g. `{name}: [{spec!r}]` to fix it at one value",
            )
    halving = _read_halving(data.get("halving"), bad)
    if halving is not None and "training.epochs" in parsed:
        raise bad(
            "training.epochs cannot be tuned with halving: the rungs set the epochs",
            "params.training.epochs",
            hint="remove training.epochs from params, or remove halving",
        )
    if search == "grid":
        n = math.prod([len(v) for v in parsed.values() if isinstance(v, list)])
        if n > MAX_GRID:
            raise bad(
                f"the grid has {n} combinations (at most {MAX_GRID})",
                "params",
                hint="set search: random with trials: N to sample it",
            )
    return SearchSpace(parsed, search=search, trials=trials, seed=seed, halving=halving)


def _read_halving(spec: Any, bad: Callable[..., ConfigError]) -> Halving | None:
    if spec is None or spec is False:
        return None
    if spec is True:
        return Halving()
    if not isinstance(spec, dict) or set(spec) - {"factor", "min_epochs"}:
        raise bad(
            f"halving is {spec!r}; use true, or {{factor: 3, min_epochs: 1}}",
            "halving",
        )
    values = {"factor": spec.get("factor", 3), "min_epochs": spec.get("min_epochs", 1)}
    for name, least in (("factor", 2), ("min_epochs", 1)):
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise bad(f"halving.{name} is {v!r}; use a whole number ≥ {least}", f"halving.{name}")
    return Halving(**values)


def candidate_config(base: Any, values: Mapping[str, Any]) -> Any:
    """The base :class:`~clinfuse.config.RunConfig` with the dotted ``values`` set.

    Raises:
        ConfigError: a field that does not exist or a value it refuses (an encoder's
            options are checked against that encoder's config); the message names the
            parameter and the value.
    """
    from pydantic import ValidationError

    from clinfuse.config import RunConfig, set_dotted
    from clinfuse.encoders.base import get_encoder_class

    data = base.model_dump(mode="json")
    for name, value in values.items():
        set_dotted(data, name, value, field=f"params.{name}")
    shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(
            f"the candidate {shown} is not a valid config: {loc}: {first['msg']}",
            field=f"params.{loc}",
            hint="see docs/configuration.md for every field and its values",
        ) from e
    for modality, spec in config.encoders.items():
        touched = [k for k in values if k.startswith(f"encoders.{modality}.")]
        if not touched:
            continue
        klass = get_encoder_class(modality, spec.get("name", ""))
        try:
            klass.config_class.model_validate(spec)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise ConfigError(
                f"the candidate {shown} is not a valid {modality} encoder config: "
                f"{loc}: {first['msg']}",
                field=f"params.encoders.{modality}.{loc}",
                hint=f"the {spec.get('name')} encoder's fields: "
                f"{', '.join(klass.config_class.model_fields)}",
            ) from e
    return config


# -- figures ---------------------------------------------------------------------------


def _metric(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    from clinfuse.evaluation.metrics import auroc_batch, brier_batch, log_loss

    if metric == "log_loss":
        return log_loss(y, p)
    return float({"auroc": auroc_batch, "brier": brier_batch}[metric](y, p)[0])


def trial_figures(
    predictions: pd.DataFrame, metric: str, cases: Sequence[str] | None = None
) -> dict[str, Any]:
    """A trial's metric from its out-of-fold predictions: pooled, and per fold.

    Args:
        predictions: ``case_id``, ``fold``, ``label``, ``p_fusion``.
        metric: a key of :data:`METRICS`.
        cases: score these cases only (the ones every trial scored).

    Returns:
        ``{"pooled", "per_fold": {fold: value}, "n_cases", "auroc", "log_loss", "brier"}``
        (the last three pooled, whatever ``metric`` is).
    """
    frame = predictions
    if cases is not None:
        frame = frame[frame["case_id"].isin(set(cases))]
    y = frame["label"].to_numpy(float)
    p = frame["p_fusion"].to_numpy(float)
    per_fold = {
        int(k): _metric(metric, g["label"].to_numpy(float), g["p_fusion"].to_numpy(float))
        for k, g in frame.groupby("fold", sort=True)
    }
    out: dict[str, Any] = {"pooled": _metric(metric, y, p), "per_fold": per_fold}
    out["n_cases"] = len(frame)
    for name in METRICS:
        out[name] = _metric(name, y, p)
    return out


# -- the search ------------------------------------------------------------------------


@dataclass
class _Search:
    """One search's ranked trials (on the whole cohort, or an outer fold's training cases).

    Attributes:
        rows: one per trial: values, figures, paired difference from the best.
        best: the chosen trial's index into ``rows``.
        paired: every trial (of the last rung) used the same fold assignment.
        rungs: with successive halving, each rung's epochs, trials and the ones kept.
    """

    rows: list[dict[str, Any]]
    best: int
    paired: bool
    rungs: list[dict[str, Any]] | None = None


@dataclass
class TuningResult:
    """What :func:`tune` wrote.

    Attributes:
        out: the tuning folder.
        summary: ``tuning.json``.
        trials: ``trials.csv``.
        best_config: the chosen :class:`~clinfuse.config.RunConfig`.
    """

    out: Path
    summary: dict[str, Any]
    trials: pd.DataFrame
    best_config: Any

    @property
    def best_config_path(self) -> Path:
        return self.out / "best_config.yaml"


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def tune(
    cohort_path: str | Path,
    out: str | Path,
    space: SearchSpace | str | Path | Mapping[str, Any],
    config: Any = None,
    *,
    folds: int = 5,
    fold_seed: int = 0,
    metric: str = "auroc",
    outer: int | None = None,
    outer_seed: int = 0,
    n_boot: int = 200,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_epoch: Callable[[Any, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TuningResult:
    """Choose hyperparameters by cross-validation; with ``outer``, validate the choice by
    nested cross-validation.

    Args:
        cohort_path: the manifest of labelled cases (a ``split`` column is ignored).
        out: the tuning folder to create.
        space: the search space (:func:`read_space`: a file, a mapping or a
            :class:`SearchSpace`).
        config: the base run config the candidates change (defaults when None).
        folds: folds of each trial's cross-validation (the same patient-level folds for
            every trial, so trials compare fold by fold).
        fold_seed: seed of those folds.
        metric: ``auroc`` (default), ``log_loss`` or ``brier`` of the pooled out-of-fold
            fused risks; the best is the highest AUROC or the lowest loss.
        outer: outer folds of a nested cross-validation of the whole search (None: none).
        outer_seed: seed of the outer folds.
        n_boot: bootstrap replicates of each trial's report (the choice does not use them).
        resume: continue an interrupted search (the same space, config and plan).
        overwrite: replace an existing folder.
        progress, on_epoch, log: as for :func:`~clinfuse.evaluation.crossval.cross_validate`.

    Returns:
        :class:`TuningResult`.

    Raises:
        ConfigError: a bad space, metric or fold count; a candidate that is not a valid
            config (checked before any training); a busy ``out``; a resumed search whose
            space, config or plan changed.
        CohortError: as for ``cross_validate`` (e.g. a fold without both outcomes).
    """
    from clinfuse.config import RunConfig, load_config
    from clinfuse.data import shared_decoding
    from clinfuse.evaluation.figures import save_figure, trials_figure
    from clinfuse.training.run import _prepare_folders

    say = log or (lambda _msg: None)
    out = Path(out)
    if metric not in METRICS:
        raise ConfigError(f"metric is {metric!r}; use one of {list(METRICS)}", field="metric")
    for name, value, least in (("folds", folds, 2), ("outer", outer, 2)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} is {value!r}; use {least} or more", field=name)
    space = space if isinstance(space, SearchSpace) else read_space(space)
    partial = out.with_name(out.name + ".partial")
    if resume and config is None and (partial / "config.yaml").exists():
        config = load_config(partial / "config.yaml")
    base = config or RunConfig()
    if space.halving is not None and space.halving.min_epochs >= base.training.epochs:
        raise ConfigError(
            f"halving.min_epochs ({space.halving.min_epochs}) must be below the config's "
            f"training.epochs ({base.training.epochs}), the last rung's epochs",
            field="halving.min_epochs",
            hint="lower min_epochs, raise training.epochs (--epochs), or remove halving",
        )
    candidates = space.candidates()
    configs = [candidate_config(base, values) for values in candidates]  # all checked first
    plan = {
        "space": space.as_dict(),
        "config_sha256": _sha(base.model_dump(mode="json")),
        "folds": folds,
        "fold_seed": fold_seed,
        "metric": metric,
        "outer": outer,
        "outer_seed": outer_seed,
        "n_boot": n_boot,
    }
    partial = _prepare_folders(out, resume=resume, overwrite=overwrite, finished="tuning.json")
    if resume and (partial / "plan.json").exists():
        old = json.loads((partial / "plan.json").read_text(encoding="utf-8"))
        if old != plan:
            changed = sorted(k for k in plan if old.get(k) != plan[k])
            raise ConfigError(
                f"the interrupted search had another {', '.join(changed)}",
                path=partial / "plan.json",
                hint="resume with the same space, config and options, or use --overwrite",
            )
    else:
        base.save(partial / "config.yaml")
        write_text_atomic(partial / "space.yaml", yaml.safe_dump(space.as_dict(), sort_keys=False))
        write_text_atomic(partial / "plan.json", json.dumps(plan))

    searcher = _Searcher(
        cohort_path=cohort_path,
        partial=partial,
        candidates=candidates,
        configs=configs,
        metric=metric,
        cv_options=dict(
            folds=folds,
            fold_seed=fold_seed,
            n_boot=n_boot,
            progress=progress,
            on_epoch=on_epoch,
            keep_fold_models=False,
        ),
        say=say,
        halving=space.halving,
        max_epochs=base.training.epochs,
    )
    try:
        with shared_decoding():  # every file is read and preprocessed once for all trials
            main = searcher.search(partial / "trials", None, "")
            best_row = main.rows[main.best]
            say(f"chosen: trial {best_row['trial']} ({metric} {best_row['pooled']:.4f})")
            nested = (
                None
                if outer is None
                else _nested(searcher, base, best_row, outer=outer, outer_seed=outer_seed)
            )
    except ClinFuseError:
        # a manifest or config the first trial refused: leave no folder in the way of the
        # corrected call (anything already trained or scored is kept for --resume; trials
        # drop their fold models once scored, so look for either)
        trained = any(partial.rglob("model.json")) or any(partial.rglob("crossval.json"))
        if not resume and not trained:
            shutil.rmtree(partial, ignore_errors=True)
        raise

    table = _trials_table(main, metric)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "clinfuse_version": __version__,
        "manifest": str(cohort_path),
        "metric": metric,
        "higher_is_better": METRICS[metric],
        "folds": folds,
        "fold_seed": fold_seed,
        "space": space.as_dict(),
        "n_trials": len(candidates),
        "n_cases": best_row["n_cases"],
        "paired_folds": main.paired,
        "trials": [
            {k: v for k, v in r.items() if k != "pooled"}
            | {"per_fold": [v for _, v in sorted(r["per_fold"].items())]}
            for r in main.rows
        ],
        "best": {
            "trial": best_row["trial"],
            "values": best_row["values"],
            metric: best_row["pooled"],
            "config": "best_config.yaml",
        },
        "nested": nested,
    }
    if main.rungs is not None:
        summary["halving"] = _halving_summary(main.rungs, space.halving, len(candidates), folds)
    summary = json.loads(json.dumps(summary))  # as tuning.json will read
    save_figure(trials_figure(summary), partial / "figures", "trials")
    best_config = configs[main.best]
    write_text_atomic(partial / "best_config.yaml", best_config.to_yaml())
    write_text_atomic(partial / "trials.csv", table.to_csv(index=False))
    (partial / "plan.json").unlink()
    write_text_atomic(partial / "tuning.json", json.dumps(summary, indent=2))
    publish(partial, out)
    return TuningResult(out=out, summary=summary, trials=table, best_config=best_config)


@dataclass
class _Searcher:
    """Runs the candidates' cross-validations on a set of cases and ranks them."""

    cohort_path: str | Path
    partial: Path
    candidates: list[dict[str, Any]]
    configs: list[Any]
    metric: str
    cv_options: dict[str, Any]
    say: Callable[[str], None]
    halving: Halving | None = None
    max_epochs: int = 1

    def search(self, root: Path, case_ids: list[str] | None, label: str) -> _Search:
        """Cross-validate the candidates on ``case_ids`` (None: all) into ``root`` — every
        one, or rung by rung with successive halving; finished trials are read, an
        interrupted one resumes."""
        everyone = list(range(len(self.candidates)))
        if self.halving is None:
            return self._rung(root, everyone, self.configs, case_ids, label)
        plan = self.halving.rungs(len(everyone), self.max_epochs)
        sign = 1.0 if METRICS[self.metric] else -1.0
        rows: list[dict[str, Any]] = [{} for _ in everyone]
        rungs, alive = [], everyone
        for r, (_, epochs) in enumerate(plan, start=1):
            configs = [
                candidate_config(self.configs[i], {"training.epochs": epochs}) for i in alive
            ]
            ranked = self._rung(
                root / f"rung_{r}",
                alive,
                configs,
                case_ids,
                f"{label}rung {r}/{len(plan)} ({epochs} epochs): ",
            )
            for i, row in zip(alive, ranked.rows, strict=True):
                rows[i] = row | {"rung": r, "epochs": epochs}
            order = sorted(range(len(alive)), key=lambda j: (-sign * ranked.rows[j]["pooled"], j))
            kept = sorted(alive[j] for j in order[: plan[r][0]]) if r < len(plan) else []
            rungs.append(
                {
                    "rung": r,
                    "epochs": epochs,
                    "trials": [i + 1 for i in alive],
                    "kept": [i + 1 for i in kept],
                }
            )
            if r == len(plan):
                return _Search(rows, alive[ranked.best], ranked.paired, rungs)
            alive = kept
        raise AssertionError("a halving plan ends with a rung of full epochs")

    def _rung(
        self,
        root: Path,
        indices: list[int],
        configs: list[Any],
        case_ids: list[str] | None,
        label: str,
    ) -> _Search:
        """Cross-validate the candidates ``indices`` with ``configs`` into
        ``root/trial_NNN``, and rank them."""
        from clinfuse.evaluation.crossval import cross_validate

        root.mkdir(parents=True, exist_ok=True)
        n = len(self.candidates)
        rows, predictions, assignments = [], [], []
        for index, cfg in zip(indices, configs, strict=True):
            i, values = index + 1, self.candidates[index]
            folder = root / f"trial_{i:03d}"
            if not (folder / "crossval.json").exists():
                resuming = (folder.with_name(folder.name + ".partial") / "config.yaml").exists()
                shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
                self.say(f"{label}trial {i}/{n}: {shown}")

                def trial_log(msg: str, i: int = i) -> None:
                    self.say(f"{label}trial {i}/{n}: {msg}")

                cross_validate(
                    self.cohort_path,
                    folder,
                    cfg,
                    resume=resuming,
                    overwrite=not resuming,
                    case_ids=case_ids,
                    log=trial_log,
                    **self.cv_options,
                )
            predictions.append(
                pd.read_csv(folder / "evaluation" / "predictions.csv", dtype={"case_id": str})
            )
            assignments.append(
                pd.read_csv(folder / "assignment.csv", dtype={"case_id": str, "patient_id": str})
            )
            cv = json.loads((folder / "crossval.json").read_text(encoding="utf-8"))
            rows.append(
                {
                    "trial": i,
                    "values": values,
                    "path": folder.relative_to(self.partial).as_posix(),
                    "config_sha256": cv["config_sha256"],
                    "epochs_run": [m["epochs_run"] for m in cv["fold_models"]],
                }
            )
        return _ranked(rows, predictions, assignments, self.metric)


def _ranked(
    rows: list[dict[str, Any]],
    predictions: list[pd.DataFrame],
    assignments: list[pd.DataFrame],
    metric: str,
) -> _Search:
    """The trials' figures on the cases every trial scored, the best trial, and each trial's
    paired per-fold difference from it."""
    common = set(predictions[0]["case_id"])
    for frame in predictions[1:]:
        common &= set(frame["case_id"])
    ordered = [c for c in predictions[0]["case_id"] if c in common]
    paired = all(a.equals(assignments[0]) for a in assignments[1:])
    for row, frame in zip(rows, predictions, strict=True):
        row.update(trial_figures(frame, metric, ordered))
        row["n_scored"] = len(frame)
    sign = 1.0 if METRICS[metric] else -1.0
    best_index = max(range(len(rows)), key=lambda j: (sign * rows[j]["pooled"], -j))
    best = rows[best_index]
    for row in rows:
        diffs = np.array(
            [row["per_fold"][k] - best["per_fold"][k] for k in sorted(best["per_fold"])]
        )
        row["diff_vs_best"] = row["pooled"] - best["pooled"]
        row["fold_diff_mean"] = float(diffs.mean()) if paired else None
        row["fold_diff_se"] = (
            float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if paired and len(diffs) > 1 else None
        )
    return _Search(rows=rows, best=best_index, paired=paired)


def _nested(
    searcher: _Searcher, base: Any, best_row: dict[str, Any], *, outer: int, outer_seed: int
) -> dict[str, Any]:
    """Cross-validate the whole search: outer fold k is scored by a model trained with the
    config a search on the other outer folds' cases chose (``nested_search/outer_k``)."""
    from clinfuse.evaluation.crossval import cross_validate

    metric, partial = searcher.metric, searcher.partial
    chosen: dict[int, _Search] = {}

    def inner_search(k: int, train_ids: list[str]) -> _Search:
        found = searcher.search(partial / "nested_search" / f"outer_{k}", train_ids, f"outer {k}: ")
        chosen[k] = found
        return found

    def choose(k: int, train_ids: list[str]) -> Any:
        return searcher.configs[inner_search(k, train_ids).best]

    out = partial / "nested"
    if not (out / "crossval.json").exists():
        resuming = (partial / "nested.partial" / "config.yaml").exists()
        options = searcher.cv_options | {"folds": outer, "fold_seed": outer_seed}
        cross_validate(
            searcher.cohort_path,
            out,
            base,
            resume=resuming,
            overwrite=not resuming,
            fold_config=choose,
            log=lambda msg: searcher.say(f"outer {msg}"),
            **options,
        )
    assignment = pd.read_csv(out / "assignment.csv", dtype={"case_id": str})
    cv = json.loads((out / "crossval.json").read_text(encoding="utf-8"))
    for k in range(1, outer + 1):  # outer folds finished before a resume: read their search
        if k not in chosen:
            inner_search(k, assignment.loc[assignment["fold"] != k, "case_id"].tolist())
    figures = trial_figures(
        pd.read_csv(out / "evaluation" / "predictions.csv", dtype={"case_id": str}), metric
    )
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    choices = []
    for k in range(1, outer + 1):
        inner = chosen[k].rows[chosen[k].best]
        if cv["fold_models"][k - 1]["config_sha256"] != inner["config_sha256"]:
            raise ConfigError(
                f"outer fold {k} was trained with another config than its search chose",
                path=out,
                hint="the folder was changed during the search; start afresh with --overwrite",
            )
        choices.append(
            {
                "fold": k,
                "trial": inner["trial"],
                "values": inner["values"],
                f"inner_{metric}": inner["pooled"],
                "inner_trials": [
                    {"trial": r["trial"], metric: r["pooled"]} for r in chosen[k].rows
                ],
                f"outer_{metric}": figures["per_fold"][k],
            }
        )
    searcher.say(
        f"nested {outer}-fold estimate of the whole search: {metric} {figures['pooled']:.4f} "
        f"(chosen trial's cross-validated {metric} {best_row['pooled']:.4f})"
    )
    return {
        "outer_folds": outer,
        "outer_seed": outer_seed,
        "path": "nested",
        "pooled": figures["pooled"],
        "per_fold": [v for _, v in sorted(figures["per_fold"].items())],
        "n_cases": figures["n_cases"],
        "auroc": metrics["models"]["fusion"]["auroc"],
        "log_loss": figures["log_loss"],
        "brier": figures["brier"],
        "choices": choices,
        "same_choice_every_fold": len({json.dumps(c["values"], sort_keys=True) for c in choices})
        == 1,
        # what the chosen trial's figure promised beyond what the whole procedure delivers
        "optimism": (best_row["pooled"] - figures["pooled"]) * (1.0 if METRICS[metric] else -1.0),
    }


def _halving_summary(
    rungs: list[dict[str, Any]], halving: Any, n_candidates: int, folds: int
) -> dict[str, Any]:
    """The rungs, and the training epochs they budgeted against every candidate at full
    epochs (early stopping may have run fewer)."""
    used = sum(len(r["trials"]) * r["epochs"] for r in rungs) * folds
    full = n_candidates * rungs[-1]["epochs"] * folds
    return halving.as_dict() | {
        "rungs": rungs,
        "epochs_budgeted": used,
        "epochs_without_halving": full,
    }


def _cell(value: Any) -> Any:
    """A parameter value as a table cell: lists and mappings as JSON, the rest as they are."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def _trials_table(search: _Search, metric: str) -> pd.DataFrame:
    """``trials.csv``: one row per trial."""
    best = search.rows[search.best]["trial"]
    return pd.DataFrame(
        [
            {
                "trial": r["trial"],
                **{f"param:{k}": _cell(v) for k, v in r["values"].items()},
                **({"rung": r["rung"], "epochs": r["epochs"]} if "rung" in r else {}),
                metric: r["pooled"],
                **{f"{metric}_fold_{k}": v for k, v in sorted(r["per_fold"].items())},
                "diff_vs_best": r["diff_vs_best"],
                "fold_diff_se": r["fold_diff_se"],
                "auroc": r["auroc"],
                "log_loss": r["log_loss"],
                "brier": r["brier"],
                "n_cases": r["n_cases"],
                "chosen": r["trial"] == best,
                "path": r["path"],
            }
            for r in search.rows
        ]
    )
