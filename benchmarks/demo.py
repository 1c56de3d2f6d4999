"""CPU demo: wall time and peak memory of ``clinfuse demo`` (target ≤ 5 min, ≤ 4 GiB on 2 cores).

Runs the real command in a child process (``--device cpu``, default cohort of 800 cases;
``--quick`` does not shrink it: the demo itself is the target), sampling the resident
memory of the whole process tree every 0.2 s. Reports the machine's load average before
and after, since other work on the machine slows the demo down.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from benchmarks._common import Context, load_average


def _tree_rss_mib(proc: object) -> float:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]  # type: ignore[attr-defined]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def run(ctx: Context) -> None:
    import psutil

    out = ctx.workdir / "demo_out"
    cmd = [sys.executable, "-m", "clinfuse", "demo", "--out", str(out), "--device", "cpu"]
    load_before = load_average()
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watcher = psutil.Process(child.pid)
    peak_tree = 0.0
    while child.poll() is None:
        peak_tree = max(peak_tree, _tree_rss_mib(watcher))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    err = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if child.returncode != 0:
        raise RuntimeError(f"clinfuse demo exited {child.returncode}: {err.strip()[-400:]}")
    config = {"command": "clinfuse demo --device cpu", "n_cases": 800}
    extra: dict[str, Any] = {"load_avg_before": load_before, "load_avg_after": load_average()}
    ctx.emit(
        "demo", "wall_s", wall, "s", config=config, target=300, higher_is_better=False, **extra
    )
    ctx.emit(
        "demo",
        "peak_rss_tree_mib",
        peak_tree,
        "MiB",
        config=config,
        target=4096,
        sampling="process tree RSS every 0.2 s",
        **extra,
    )
