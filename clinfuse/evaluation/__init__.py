"""Cohort evaluation: metrics with confidence intervals.

The names below load their module (scipy, scikit-learn, torch) on first use, so importing
:mod:`clinfuse.evaluation` — as the CLI does to register its commands — stays cheap.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_exports

_LAZY = {
    "ConformalSets": "clinfuse.evaluation.conformal",
    "conformal_from_evaluation": "clinfuse.evaluation.conformal",
    "coverage_table": "clinfuse.evaluation.conformal",
    "risk_adjusted_cusum": "clinfuse.evaluation.cusum",
    "repeated_cross_validate": "clinfuse.evaluation.repeated",
    "tune": "clinfuse.evaluation.tune",
    "monitor_predictions": "clinfuse.evaluation.monitor",
    "EvaluationResult": "clinfuse.evaluation.evaluate",
    "Evaluator": "clinfuse.evaluation.evaluate",
    "evaluate_run": "clinfuse.evaluation.evaluate",
    "METRICS": "clinfuse.evaluation.metrics",
    "auprc_batch": "clinfuse.evaluation.metrics",
    "auroc_batch": "clinfuse.evaluation.metrics",
    "bootstrap_ci": "clinfuse.evaluation.metrics",
    "brier_batch": "clinfuse.evaluation.metrics",
    "metric_with_ci": "clinfuse.evaluation.metrics",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
