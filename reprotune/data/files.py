"""Which files of a folder are the user's images: the rule ingest scans data/raw with and predict reads any
folder with, so both skip the same things."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_FILES = {"thumbs.db", "desktop.ini", "icon\r"}


def is_hidden(name: str) -> bool:
    """Dot files (.DS_Store, ._resource forks, .gitkeep) and OS litter are skipped silently."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def list_files(root: Path) -> list[Path]:
    """Every visible file (or link) under root, hidden folders pruned, in a stable order."""
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders[:] = sorted(d for d in subfolders if not is_hidden(d))
        found.extend(Path(folder) / name for name in sorted(files) if not is_hidden(name))
    return found
