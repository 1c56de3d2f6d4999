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

__all__ = [
    "MODALITIES",
    "ClinFuseError",
    "CohortError",
    "ConfigError",
    "DataFileNotFoundError",
    "ModalityLoadError",
    "__version__",
]
