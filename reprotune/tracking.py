"""Where MLflow runs go, and the lineage every run carries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEFAULT_STORE = "mlflow.db"


def tracking_uri(project_root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set (a server, say); else a SQLite store at the project root.

    The path is absolute: a relative URI would resolve inside whatever folder DVC runs the stage in.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = (project_root or Path.cwd()).resolve()
    return f"sqlite:///{(root / DEFAULT_STORE).as_posix()}"


def git_lineage(root: Path | None = None) -> dict[str, str]:
    """The commit the run's code came from and whether the tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
    }
