"""``python -m benchmarks [names...] [--device cpu|cuda] [--quick] [--out FILE.jsonl]``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import BENCHMARKS, describe


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all by default); JSON lines on stdout, progress on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="clinfuse speed and memory benchmarks: one JSON line per figure.",
        epilog=describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU in minutes)")
    parser.add_argument("--out", type=Path, default=None, help="also append the lines here")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(describe())
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")

    import torch

    from benchmarks._common import Context, log

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible; use --device cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = args.names or list(BENCHMARKS)
    out = None
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = args.out.open("a", encoding="utf-8")
    failed = []
    try:
        with tempfile.TemporaryDirectory(prefix="clinfuse-bench-") as tmp:
            os.environ.setdefault("CLINFUSE_CACHE", str(Path(tmp) / "cache"))
            ctx = Context(device=device, quick=args.quick, workdir=Path(tmp), out=out)
            for name in names:
                log(f"{name} ({device}{', quick' if args.quick else ''})")
                try:
                    BENCHMARKS[name].run(ctx)
                except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
                    failed.append(name)
                    log(f"{name} FAILED: {type(e).__name__}: {e}")
                    ctx.emit(name, "error", None, "", error=f"{type(e).__name__}: {e}")
    finally:
        if out is not None:
            out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
