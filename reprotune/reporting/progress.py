"""Progress of a long loop, wherever its output goes: a bar on a terminal; off one (CI, nohup, a scheduler,
`dvc queue`, stderr redirected to a file) a log line at a steady interval with the count, the rate and the
time left, since a bar's carriage returns make one unreadable line of a log file.

The interval is REPROTUNE_PROGRESS_SECONDS (default 30 s); the first line comes after one interval, so a loop
shorter than that logs nothing but its own result.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

log = logging.getLogger("reprotune.progress")

Item = TypeVar("Item")


def interval_seconds() -> float:
    value = os.environ.get("REPROTUNE_PROGRESS_SECONDS", "30")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 30.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """3h05m, 4m12s, 9s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress(items: Iterable[Item], desc: str, unit: str = "it", total: int | None = None) -> Iterator[Item]:
    """`items`, passed through unchanged, with progress shown: a tqdm bar on a terminal, else a log line
    every interval (`desc: 120/400 batch (30%), 4.1 batch/s, 1m08s left`)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if on_terminal():
        yield from tqdm(items, desc=desc, unit=unit, total=total)
        return
    every = interval_seconds()
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            log.info("%s", line(desc, unit, done, total, now - start))


def line(desc: str, unit: str, done: int, total: int | None, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else float("inf")
    shown = f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}" if rate > 0 else "-"
    if total:
        left = (total - done) / rate if rate > 0 else 0.0
        return f"{desc}: {done}/{total} {unit} ({100 * done / total:.0f}%), {shown}, {duration(left)} left"
    return f"{desc}: {done} {unit}, {shown}, {duration(elapsed)} so far"
