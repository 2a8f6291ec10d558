"""How every output is written: to a temporary sibling first, renamed into place on success, so a crash
(Ctrl-C, SIGTERM, an exception) never leaves a half-written output; and the small JSON/text helpers on top."""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with that pid is running (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` (file or folder) to fill; rename it into place on success.

    On any exception (Ctrl-C included) the temporary is removed and `target` is left as it was. A process
    killed outright (SIGKILL, a lost machine) cannot clean up: the next write of `target` removes the
    temporaries of processes that no longer exist.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial-{os.getpid()}")
    for stale in target.parent.glob(f".{glob.escape(target.name)}.partial-*"):
        pid = stale.name.rpartition("-")[2]
        if pid.isdigit() and not process_alive(int(pid)):
            _remove(stale)
    _remove(temporary)
    try:
        yield temporary
        if temporary.is_dir():
            _remove(target)  # os.replace cannot put a folder over a non-empty folder
        os.replace(temporary, target)
    finally:
        _remove(temporary)


def write_json(path: Path, data: Any) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
