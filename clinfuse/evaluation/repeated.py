"""Repeated k-fold cross-validation: the same procedure with the patients dealt to folds anew.

One k-fold cross-validation's figure depends on how the patients happened to fall into folds;
on a few hundred cases that alone moves the pooled AUROC by a few hundredths. Repeating the
cross-validation with other fold assignments and averaging the figures removes that part of
the noise (Steyerberg, *Clinical Prediction Models*, 2nd ed., §17.2; TRIPOD+AI 12c). Repeat
``r`` deals the patients with fold seed ``fold_seed + r − 1`` and is a complete
cross-validation folder of its own (``clinfuse predict`` and ``clinfuse compare`` take it as
one)::

    REPEATS/
      repeats.json        plan, per-repeat pooled figures and their mean, SD and range (last)
      repeats.csv         one row per repeat
      figures/repeats.png the pooled AUROC of each repeat with its DeLong interval
      config.yaml         the run config of every fold of every repeat
      repeat_1/ ...       complete cross-validation folders (clinfuse crossval)

The mean over repeats is the estimate; the SD across repeats measures how much one
cross-validation's figure depends on its fold assignment. The repeats share their cases, so
neither SD nor range is a confidence interval: each repeat's own interval is (in
``repeats.csv`` and the figure). It is written as ``REPEATS.partial`` and renamed when
complete; ``resume=True`` keeps the finished repeats and resumes an interrupted one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clinfuse.errors import ConfigError

__all__ = ["SCHEMA", "RepeatedCrossValResult", "repeated_cross_validate"]

SCHEMA = "clinfuse.repeated_crossval.v1"

_FIGURES = ("auroc", "calibration_intercept", "calibration_slope", "oe_ratio", "brier")


@dataclass
class RepeatedCrossValResult:
    """What :func:`repeated_cross_validate` wrote.

    Attributes:
        out: the folder.
        summary: ``repeats.json``.
        rows: ``repeats.csv``, one row per repeat.
    """

    out: Path
    summary: dict[str, Any]
    rows: pd.DataFrame

    def repeat(self, r: int) -> Path:
        """The cross-validation folder of repeat ``r`` (from 1)."""
        return self.out / f"repeat_{r}"


def _row(r: int, folder: Path) -> dict[str, Any]:
    summary = json.loads((folder / "crossval.json").read_text(encoding="utf-8"))
    metrics = json.loads((folder / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    cal = metrics["calibration"]["fusion"]
    auc = summary["pooled"]["auroc"]
    return {
        "repeat": r,
        "fold_seed": summary["fold_seed"],
        "n_scored": summary["n_scored"],
        "auroc": auc["value"],
        "auroc_ci_low": auc.get("delong_ci_low", auc.get("ci_low")),
        "auroc_ci_high": auc.get("delong_ci_high", auc.get("ci_high")),
        "calibration_intercept": cal["intercept"]["value"],
        "calibration_slope": cal["slope"]["value"],
        "oe_ratio": cal["oe_ratio"]["value"],
        "brier": summary["pooled"]["brier"]["value"],
        "fold_auroc_sd": summary["across_folds"]["auroc"]["sd"],
        "folder": f"repeat_{r}",
    }


def _figure(rows: pd.DataFrame, mean: float | None) -> Any:
    from clinfuse.evaluation.figures import COLORS, _figure

    fig = _figure(5.5, max(2.5, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot()
    ticks = list(range(len(rows), 0, -1))
    for y, r in zip(ticks, rows.to_dict(orient="records"), strict=True):
        if r["auroc"] is None or r["auroc"] != r["auroc"]:
            continue
        ax.plot([r["auroc_ci_low"], r["auroc_ci_high"]], [y, y], color=COLORS[0], lw=1.5)
        ax.plot(r["auroc"], y, "s", color=COLORS[0], ms=5)
    if mean is not None:
        ax.axvline(mean, color=COLORS[1], lw=1, ls=":", label=f"mean over repeats {mean:.3f}")
        ax.legend(loc="lower left", fontsize=8)
    labels = [
        f"repeat {r} (seed {s})" for r, s in zip(rows["repeat"], rows["fold_seed"], strict=True)
    ]
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="pooled out-of-fold AUROC (DeLong 95 % CI)", title="Repeated cross-validation")
    return fig


def repeated_cross_validate(
    cohort_path: str | Path,
    out: str | Path,
    config: Any = None,
    *,
    repeats: int,
    folds: int | None = None,
    fold_seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    **crossval_args: Any,
) -> RepeatedCrossValResult:
    """Cross-validate ``repeats`` times with fresh fold assignments (module docstring).

    Args:
        cohort_path: the labelled manifest.
        out: the folder to create.
        config: run configuration of every fold (defaults when None; resuming, the stored
            one, and a different one is an error).
        repeats: number of cross-validations (2 or more).
        folds: folds per cross-validation (default 5).
        fold_seed: the first repeat's fold seed (default 0); repeat ``r`` uses
            ``fold_seed + r − 1``.
        resume: continue an interrupted repeated cross-validation.
        overwrite: replace an existing folder.
        log: one-line messages.
        crossval_args: passed to every
            :func:`~clinfuse.evaluation.crossval.cross_validate` (``subgroups``, ``n_boot``,
            ``time_column``, ...); ``group_by`` is refused (groups are fixed: repeats would
            be identical).

    Raises:
        ConfigError: fewer than 2 repeats, ``group_by``, a busy ``out``, or a resumed run
            whose plan or config changed; and what :func:`cross_validate` raises.
    """
    from clinfuse._files import publish, write_text_atomic
    from clinfuse.config import RunConfig, load_config
    from clinfuse.evaluation.crossval import _config_sha, _spread, cross_validate
    from clinfuse.evaluation.figures import save_figure
    from clinfuse.training.run import _prepare_folders

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ConfigError(
            f"repeats is {repeats!r}; use 2 or more (or one cross-validation)", field="repeats"
        )
    if crossval_args.get("group_by"):
        raise ConfigError(
            "repeats deal the patients to folds anew, but with group_by the folds are the "
            "groups: every repeat would be the same",
            field="repeats",
            hint="drop --repeats, or use --folds",
        )
    say = log or (lambda _m: None)
    out = Path(out)
    folds = 5 if folds is None else folds
    first_seed = 0 if fold_seed is None else fold_seed
    plan = {"repeats": repeats, "folds": folds, "fold_seed": first_seed}
    partial = out.with_name(out.name + ".partial")
    if resume and config is None and (partial / "config.yaml").is_file():
        config = load_config(partial / "config.yaml")  # resuming: the stored one
    config = config or RunConfig()
    if resume and (partial / "plan.json").is_file():
        stored = json.loads((partial / "plan.json").read_text(encoding="utf-8"))
        if stored != plan:
            raise ConfigError(
                f"the interrupted repeated cross-validation used {stored}; this call asks for "
                f"{plan}",
                path=partial / "plan.json",
                hint="resume with the same --repeats, --folds and --fold-seed, or --overwrite",
            )
        if _config_sha(load_config(partial / "config.yaml")) != _config_sha(config):
            raise ConfigError(
                "the config differs from the one the interrupted run started with",
                path=partial / "config.yaml",
                hint="resume without --config, or start afresh with --overwrite",
            )
    partial = _prepare_folders(out, resume=resume, overwrite=overwrite, finished="repeats.json")
    fresh = not (partial / "plan.json").exists()
    if fresh:
        config.save(partial / "config.yaml")
        write_text_atomic(partial / "plan.json", json.dumps(plan))
    try:
        for r in range(1, repeats + 1):
            target = partial / f"repeat_{r}"
            if (target / "crossval.json").is_file():
                say(f"repeat {r}/{repeats}: finished earlier, kept")
                continue
            interrupted = (target.with_name(target.name + ".partial") / "plan.json").is_file()
            say(f"repeat {r}/{repeats}: fold seed {first_seed + r - 1}")

            def repeat_log(msg: str, r: int = r) -> None:
                say(f"repeat {r}/{repeats}: {msg}")

            cross_validate(
                cohort_path,
                target,
                config,
                folds=folds,
                fold_seed=first_seed + r - 1,
                resume=interrupted,
                log=repeat_log,
                **crossval_args,
            )
    except BaseException:
        if fresh and not any(partial.glob("repeat_*")):  # refused before any training
            shutil.rmtree(partial, ignore_errors=True)
        raise
    rows = pd.DataFrame([_row(r, partial / f"repeat_{r}") for r in range(1, repeats + 1)])
    summary = {
        "schema": SCHEMA,
        **plan,
        "config_sha256": _config_sha(config),
        "repeats_detail": rows.to_dict(orient="records"),
        "across_repeats": {key: _spread(rows[key].tolist(), "n") for key in _FIGURES},
    }
    summary = json.loads(json.dumps(summary, default=float))
    save_figure(
        _figure(rows, summary["across_repeats"]["auroc"]["mean"]), partial / "figures", "repeats"
    )
    write_text_atomic(partial / "repeats.csv", rows.to_csv(index=False))
    (partial / "plan.json").unlink()
    write_text_atomic(partial / "repeats.json", json.dumps(summary, indent=2))
    publish(partial, out)
    return RepeatedCrossValResult(out=out, summary=summary, rows=rows)
