"""Settings that hold for one command's work, as context variables (light: no imports)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["EXTERNAL_PATHS"]

EXTERNAL_PATHS: ContextVar[bool] = ContextVar("clinfuse_external_paths", default=False)
"""Accept files outside the manifest's folder in every manifest read in this context, as if
each read passed ``allow_external_paths=True`` (the commands' ``--allow-external-paths``)."""
