"""clinfuse: multimodal clinical decision support with late fusion.

Importing :mod:`clinfuse` is cheap: heavy dependencies (MONAI, transformers,
wfdb, SHAP, Streamlit) load only when the feature that needs them is used.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_exports
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
    "load_run": "clinfuse.model",
    "load_ensemble": "clinfuse.ensemble",
    "FoldEnsemble": "clinfuse.ensemble",
    "FusionModel": "clinfuse.model",
    "Cohort": "clinfuse.cohort.manifest",
    "RunConfig": "clinfuse.config",
    "train_run": "clinfuse.training.run",
    "synthesize_cohort": "clinfuse.synth",
    "validate_cohort": "clinfuse.cohort.validate",
}

# heavy parts of the API load on first use, so ``import clinfuse`` stays fast
__getattr__ = lazy_exports(__name__, _LAZY)


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
