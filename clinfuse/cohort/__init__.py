"""The cohort manifest contract: reading, checking, splitting and validating cohorts."""

from clinfuse.cohort.manifest import CaseRow, Cohort, Issue, check_manifest, read_manifest
from clinfuse.cohort.split import assign_folds, assign_splits, split_cohort
from clinfuse.cohort.validate import ValidationReport, validate_cohort

__all__ = [
    "CaseRow",
    "Cohort",
    "Issue",
    "ValidationReport",
    "assign_folds",
    "assign_splits",
    "check_manifest",
    "read_manifest",
    "split_cohort",
    "validate_cohort",
]
