"""Cohort evaluation: metrics with confidence intervals."""

from clinfuse.evaluation.metrics import (
    METRICS,
    auprc_batch,
    auroc_batch,
    bootstrap_ci,
    brier_batch,
    metric_with_ci,
)

__all__ = ["METRICS", "auprc_batch", "auroc_batch", "bootstrap_ci", "brier_batch", "metric_with_ci"]
