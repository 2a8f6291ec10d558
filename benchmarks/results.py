"""Where benchmark figures go: merged by section into reports/bench.json, each with the machine's cores."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

BENCH_FILE = Path("reports/bench.json")


def save(section: str, result: dict) -> dict:
    result = {"cores": os.cpu_count(), "machine": platform.machine(), **result}
    existing = json.loads(BENCH_FILE.read_text()) if BENCH_FILE.exists() else {}
    BENCH_FILE.parent.mkdir(parents=True, exist_ok=True)
    temporary = BENCH_FILE.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(existing | {section: result}, indent=2) + "\n")
    temporary.replace(BENCH_FILE)
    return result


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """rows: (figure, value, target or comment)."""
    print(f"\n{title}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>14}  {note}")
