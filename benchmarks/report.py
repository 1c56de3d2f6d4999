"""Markdown tables from benchmark JSON lines: ``python -m benchmarks.report results.jsonl``.

One table per benchmark (figure, value, unit, baseline, ratio, the configuration that
differs between lines), headed by the machine, device, torch version and date.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
    return str(x)


def _varying(rows: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for r in rows for k in r["config"]})
    return [k for k in keys if len({json.dumps(r["config"].get(k), default=str) for r in rows}) > 1]


def to_markdown(records: list[dict[str, Any]]) -> str:
    """The tables for ``records`` (in the order the benchmarks first appear)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["benchmark"]].append(r)
    out = []
    for name, rows in groups.items():
        first = rows[0]
        out.append(
            f"### {name}\n\n{first['device']}, {first['cpu_count']} CPUs, torch {first['torch']}, "
            f"{first['date'][:10]}{' (--quick)' if first.get('quick') else ''}; "
            f"load average {first.get('load_avg')}\n"
        )
        varying = _varying(rows)
        head = ["figure", "value", "unit", "baseline", "ratio", *varying]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + " --- |" * len(head))
        for r in rows:
            cells = [
                r["figure"],
                _fmt(r["value"]),
                r["unit"],
                _fmt(r["baseline"]),
                _fmt(r["ratio_to_baseline"]),
                *[_fmt(r["config"].get(k)) for k in varying],
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    records = []
    for path in args or ["-"]:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        records += [json.loads(line) for line in text.splitlines() if line.strip()]
    print(to_markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
