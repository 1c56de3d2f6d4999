"""How many processes read a cohort's files (light: the CLI and the manifest checks import it)."""

from __future__ import annotations

import contextvars
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from clinfuse.errors import ConfigError

__all__ = ["PARALLEL_LOAD_MIN_ROWS", "ordered_map", "scoring_workers"]

T = TypeVar("T")
R = TypeVar("R")

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


def ordered_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[R]:
    """``fn`` of every item, in order; in ``workers`` processes (forked where the platform
    allows, so they inherit this process's state) when ``workers`` > 1 and there are several
    items, else here. ``initializer(*initargs)`` runs in each worker process only.

    Raises:
        ConfigError: a worker process died (killed, e.g. for lack of memory), naming how far
            the work got and what to do.
    """
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=initializer,
        initargs=initargs,
    ) as pool:
        done = 0
        try:
            for result in pool.map(
                fn, items, chunksize=max(1, min(32, len(items) // (4 * workers)))
            ):
                done += 1
                yield result
        except BrokenProcessPool as e:
            raise ConfigError(
                f"a process reading the cohort's files stopped after {done} of {len(items)} "
                f"cases ({workers} processes; killed, e.g. for lack of memory)",
                field="workers",
                hint="run again with fewer processes (--workers 1, or training.load_workers: 0)",
            ) from e
