"""Kept for old commands: ``python benchmarks/bench_train.py [--device cuda]`` =
``python -m benchmarks train_step [--device cuda]``."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.__main__ import main

    sys.exit(main(["train_step", *sys.argv[1:]]))
