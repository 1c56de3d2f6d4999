"""Shared pieces of the modality transform pipelines."""

from __future__ import annotations

from typing import Any

from monai.transforms import Compose

from clinfuse.errors import unwrap_clinfuse_error

__all__ = ["ClinicalCompose"]


class ClinicalCompose(Compose):
    """MONAI ``Compose`` that lets clinfuse errors through.

    ``Compose`` wraps every exception of a step in ``RuntimeError("applying
    transform ...")``. Callers of clinfuse pipelines (validation, training
    exclusions, the CLI) need the :class:`~clinfuse.errors.ClinFuseError` that names
    the case, so it is re-raised unwrapped, with its own cause (the library error)
    kept. Other exceptions stay wrapped as MONAI does.
    """

    def __call__(
        self,
        input_: Any,
        start: int = 0,
        end: int | None = None,
        threading: bool = False,
        lazy: bool | None = None,
    ) -> Any:
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as e:
            cause = unwrap_clinfuse_error(e)
            if cause is None:
                raise
            err = cause
        raise err from err.__cause__  # outside the handler: keeps err's own cause, adds no cycle
