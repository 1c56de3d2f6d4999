"""Cohort evaluation: metrics with confidence intervals."""

from clinfuse.evaluation.evaluate import EvaluationResult, Evaluator, evaluate_run
from clinfuse.evaluation.metrics import (
    METRICS,
    auprc_batch,
    auroc_batch,
    bootstrap_ci,
    brier_batch,
    metric_with_ci,
)

__all__ = [
    "METRICS",
    "EvaluationResult",
    "Evaluator",
    "auprc_batch",
    "auroc_batch",
    "bootstrap_ci",
    "brier_batch",
    "evaluate_run",
    "metric_with_ci",
]
