"""How many processes read a cohort's files (light: the CLI and the manifest checks import it)."""

from __future__ import annotations

import contextvars
import multiprocessing
import os
from typing import Any

from clinfuse.errors import ConfigError

__all__ = ["PARALLEL_LOAD_MIN_ROWS", "broken_pool_error", "scoring_workers"]

_DECODED: contextvars.ContextVar[dict[tuple[str, str, str], Any] | None] = contextvars.ContextVar(
    "clinfuse_decoded", default=None
)
"""The memory of :func:`clinfuse.data.shared_decoding` (None outside such a block)."""

PARALLEL_LOAD_MIN_ROWS = 128
"""Fewer rows than this load in the calling process when workers are ``"auto"``."""


def scoring_workers(workers: int | str, n_rows: int) -> int:
    """Processes that read a cohort's files (validate, train, predict, evaluate, explain).

    ``"auto"``: one per CPU this process may use (at most 8) when the cohort has at least
    :data:`PARALLEL_LOAD_MIN_ROWS` rows, the platform can fork, and no
    :func:`clinfuse.data.shared_decoding` block is open (its memory lives in this
    process); otherwise 0. Nothing else computes while a cohort loads, so every core
    reads and preprocesses.

    Raises:
        ConfigError: ``workers`` is neither ``"auto"`` nor a count >= 0.
    """
    if workers == "auto":
        if (
            n_rows < PARALLEL_LOAD_MIN_ROWS
            or _DECODED.get() is not None
            or "fork" not in multiprocessing.get_all_start_methods()
        ):
            return 0
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return min(8, cpus or 1) if (cpus or 1) > 1 else 0
    if isinstance(workers, str) and workers.strip().isdigit():
        workers = int(workers)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(
            f"workers is {workers!r}",
            field="workers",
            hint="give 'auto' or a number of processes (0 = load in this process)",
        )
    return workers


def broken_pool_error(workers: int, done: int, total: int) -> ConfigError:
    """The error for a worker process that died while reading files (killed, out of memory)."""
    return ConfigError(
        f"a process reading the cohort's files stopped after {done} of {total} cases "
        f"({workers} processes; killed, e.g. for lack of memory)",
        field="workers",
        hint="run again with fewer processes (--workers 1, or training.load_workers: 0)",
    )
