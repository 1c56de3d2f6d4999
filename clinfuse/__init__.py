"""clinfuse: multimodal clinical decision support with late fusion.

Importing :mod:`clinfuse` is cheap: heavy dependencies (MONAI, transformers,
wfdb, SHAP, Streamlit) load only when the feature that needs them is used.
"""

from __future__ import annotations

from clinfuse.errors import (
    ClinFuseError,
    CohortError,
    ConfigError,
    DataFileNotFoundError,
    ModalityLoadError,
)

__version__ = "0.1.0.dev0"

MODALITIES: tuple[str, ...] = ("image", "note", "signal", "tabular")
"""The modalities clinfuse knows, in their canonical order."""

_LAZY = {
    "load_run": ("clinfuse.model", "load_run"),
    "load_ensemble": ("clinfuse.ensemble", "load_ensemble"),
    "FoldEnsemble": ("clinfuse.ensemble", "FoldEnsemble"),
    "FusionModel": ("clinfuse.model", "FusionModel"),
    "Cohort": ("clinfuse.cohort.manifest", "Cohort"),
    "RunConfig": ("clinfuse.config", "RunConfig"),
    "train_run": ("clinfuse.training.run", "train_run"),
    "synthesize_cohort": ("clinfuse.synth", "synthesize_cohort"),
    "validate_cohort": ("clinfuse.cohort.validate", "validate_cohort"),
}


def __getattr__(name: str) -> object:
    """Heavy parts of the API load on first use, so ``import clinfuse`` stays fast."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clinfuse' has no attribute {name!r}")


__all__ = [
    "MODALITIES",
    "ClinFuseError",
    "Cohort",
    "CohortError",
    "ConfigError",
    "DataFileNotFoundError",
    "FoldEnsemble",
    "FusionModel",
    "ModalityLoadError",
    "RunConfig",
    "__version__",
    "load_ensemble",
    "load_run",
    "synthesize_cohort",
    "train_run",
    "validate_cohort",
]
