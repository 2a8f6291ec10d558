"""Where MLflow runs go, and the lineage every run carries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEFAULT_STORE = "mlflow.db"


def project_root(folder: Path | None = None) -> Path:
    """The project the stage belongs to. `dvc exp run --queue/--temp` runs stages in a copy under
    <project>/.dvc/tmp/exps/; their runs must land in the project's store, not in the throwaway copy's."""
    folder = (folder or Path.cwd()).resolve()
    parts = folder.parts
    for index in range(len(parts) - 3):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return folder


def tracking_uri(folder: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set (a server, say); else a SQLite store at the project root.

    The path is absolute: a relative URI would resolve inside whatever folder DVC runs the stage in.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(project_root(folder) / DEFAULT_STORE).as_posix()}"


def artifact_location(folder: Path | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: beside the project's store (never inside a DVC experiment
    copy, which is deleted); None with a tracking server, which decides for itself."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (project_root(folder) / "mlartifacts").as_uri()


def experiment_lineage() -> dict[str, str]:
    """Under `dvc exp run`, DVC names the experiment and its baseline commit in the environment."""
    names = {"DVC_EXP_NAME": "dvc_exp_name", "DVC_EXP_BASELINE_REV": "dvc_exp_baseline_rev"}
    return {tag: os.environ[variable] for variable, tag in names.items() if os.environ.get(variable)}


def stage_output_hashes(lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """{"dvc.<stage>.<output path>": md5} from dvc.lock, for the stages that ran before this one."""
    import yaml

    if not lock_file.is_file():
        return {}
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    return {
        f"dvc.{stage}.{out['path']}": out["md5"]
        for stage, entry in lock.get("stages", {}).items()
        for out in entry.get("outs", [])
        if "md5" in out
    }


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
