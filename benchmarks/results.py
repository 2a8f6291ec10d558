"""Where benchmark figures go: merged by section into reports/bench.json, each with the machine's cores and the
commit it measured."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

BENCH_FILE = Path("reports/bench.json")


def commit() -> str:
    """The code measured: HEAD's short hash, marked `+changes` when the working tree differs from it."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def save(section: str, result: dict) -> dict:
    result = {"cores": os.cpu_count(), "machine": platform.machine(), "commit": commit(), **result}
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
