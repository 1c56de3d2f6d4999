"""Kept for old commands: ``python benchmarks/bench_bootstrap.py`` = ``python -m benchmarks bootstrap``."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.__main__ import main

    sys.exit(main(["bootstrap", *sys.argv[1:]]))
