"""Shared helpers of :mod:`clinfuse.explain`: optional imports, warnings, case lookup."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ClinFuseError, ConfigError

__all__ = [
    "ExplainerFallbackWarning",
    "NoModalityWarning",
    "import_shap",
    "safe_name",
    "write_json_atomic",
]


class ExplainerFallbackWarning(UserWarning):
    """An explainer could not handle the network; another method was used (named in the message)."""


class NoModalityWarning(UserWarning):
    """A case has no modality present: its explanation is the base rate."""


def import_shap() -> Any:
    """``shap``, or a :class:`ConfigError` saying how to install it."""
    try:
        import shap
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"explanations need the `shap` package ({e})",
            hint="pip install 'clinfuse[explain]'",
        ) from e
    return shap


def import_captum_attr() -> Any:
    """``captum.attr``, or a :class:`ConfigError` saying how to install it."""
    try:
        import captum.attr as captum_attr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"this attribution method needs the `captum` package ({e})",
            hint="pip install 'clinfuse[explain]'",
        ) from e
    return captum_attr


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(case_id: str) -> str:
    """A file-system-safe folder name for a case id, one per id.

    Characters other than ASCII letters, digits, ``.``, ``_`` and ``-`` become ``_``; an id
    that had to change (or is longer than 100 characters) gets 8 hex digits of its SHA-256,
    so ``患者0003`` and ``病例0003`` do not share a folder.

    >>> safe_name("case0001"), safe_name("a/b")
    ('case0001', 'a_b-c14cddc0')
    """
    text = str(case_id)
    name = _UNSAFE.sub("_", text).strip("._") or "case"
    if name == text and len(name) <= 100:
        return name
    return f"{name[:100]}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


def _finite(obj: Any) -> Any:
    """NaN/inf floats → None, so the JSON is standard (no ``NaN`` tokens)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, np.floating):
        return _finite(float(obj))
    return obj


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to ``path`` and rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False),
        encoding="utf-8",
    )
    os.replace(tmp, path)


def unknown_case_error(case_id: str, known: Sequence[str], path: Any = None) -> ClinFuseError:
    from clinfuse.errors import CohortError

    sample = ", ".join(list(known)[:5]) + (" …" if len(known) > 5 else "")
    return CohortError(
        f"case id {case_id!r} is not in the cohort ({len(known)} cases, e.g. {sample})",
        case_id=case_id,
        field="case_id",
        path=path,
        hint="check the id against the manifest's case_id column",
    )
