"""Where MLflow runs go, and the lineage every run carries."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reprotune.pipeline.layout import project_root
from reprotune.pipeline.params import Paths

DEFAULT_STORE = "mlflow.db"
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own tag: which kind of work the experiment holds


def tracking_uri(folder: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set (a server, say); else a SQLite store at the project root.

    The path is absolute: a relative URI would resolve inside whatever folder DVC runs the stage in.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(project_root(folder) / DEFAULT_STORE).as_posix()}"


def command_tracking_uri(given: str | None = None) -> str:
    """The store a command outside the pipeline reads (predict's `models:/`, compare, serve): `given`
    (--tracking-uri), else MLFLOW_TRACKING_URI, else the project store in this folder or the nearest one
    above it. Never a new empty store: a folder without one is an error saying how to name it."""
    if given:
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_STORE).is_file():
            return tracking_uri(folder)
    from reprotune.pipeline.errors import InputError

    raise InputError(
        f"no MLflow store in {here} or above it: run the command inside the project, pass "
        "--tracking-uri sqlite:///<project>/mlflow.db (or a server's http:// address), or set MLFLOW_TRACKING_URI"
    )


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (for the default store, the
    project's `mlartifacts/`, never inside a DVC experiment copy, which is deleted); None with a tracking
    server, which decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store. MLflow creates a fresh store's tables with alembic
    migrations on first use; two processes doing so at once (parallel `dvc queue` workers) both fail."""
    if not uri.startswith("sqlite:///"):
        yield  # a server serialises its own store
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_experiment(name: str) -> str:
    """Point MLflow at the project's store and return the experiment's id, creating the store and the
    experiment (artifacts beside the store) under the store lock, so concurrent first runs do not race."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(name)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(name, artifact_location=artifact_location(uri))
        )
        if found is None or EXPERIMENT_KIND not in found.tags:
            # What kind of work this is, for MLflow's own tools; the 3.17 UI goes by its own toggle instead
            # (docs/mlflow.md gives the URL that opens the training runs).
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, "custom_model_development")
        return experiment_id


def point_alias(model_name: str, alias: str, version: str) -> None:
    """Point `alias` of a registered model at `version`. MLflow's SQL store checks whether the alias exists
    and then inserts it; two track stages doing that at once (parallel `dvc queue` workers) collide on its
    unique key, so on a SQLite store it happens under the store lock."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    with store_lock(uri):
        MlflowClient(uri).set_registered_model_alias(model_name, alias, version)


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


@dataclass(frozen=True)
class Artifact:
    stage: str
    path: Path
    folder: str  # where it lies in the MLflow run


def declared_artifacts(paths: Paths, pipeline: Path = Path("dvc.yaml"), own: str = "track") -> list[Artifact]:
    """What the stages declare in dvc.yaml as outputs (outs, metrics, plots) that belong in a run, in
    dvc.yaml's order: reports
    (`cache: false`: small, committed to git) under `reports/`, placed as they lie under `paths.reports`,
    and models (`type: model`) under `models/<folder>`. Data outputs (neither) stay in DVC alone; the
    `own` stage's outputs are left out. A stage that declares an output this way has it logged: no list
    here to keep."""
    import yaml

    stages = yaml.safe_load(pipeline.read_text(encoding="utf-8"))["stages"]
    reports = Path(paths.reports)
    found = []
    for stage, spec in stages.items():
        if stage == own:
            continue
        for entry in [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]:
            written, flags = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            path = Path(_interpolate(written, paths))
            if (flags or {}).get("type") == "model":
                found.append(Artifact(stage, path, f"models/{path.name}"))
            elif (flags or {}).get("cache") is False:
                folder = (path if path.is_dir() else path.parent).relative_to(reports)
                found.append(Artifact(stage, path, (Path("reports") / folder).as_posix()))
    return found


def _interpolate(written: str, paths: Paths) -> str:
    """dvc.yaml's `${paths.name}` filled in from params.yaml, as DVC fills it."""

    def value(match: re.Match) -> str:
        return str(getattr(paths, match.group(1)))

    filled = re.sub(r"\$\{paths\.(\w+)\}", value, written)
    if "${" in filled:
        raise ValueError(f"dvc.yaml: {written}: only ${{paths.*}} is interpolated here")
    return filled


def run_name(params: dict[str, str], previous: dict[str, str] | None, experiment: str | None) -> str:
    """A name a person recognises: the DVC experiment's (`dvc exp run`), else the backbone and strategy and
    the params changed since the previous run (`efficientnet_lite0 full lr=0.001`), from flattened params."""
    if experiment:
        return experiment
    named = ("backbone.name", "finetune.strategy")
    name = " ".join(params.get(key, "?") for key in named)
    changed = {k: v for k, v in changed_params(params, previous).items() if k not in named}
    shown = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in list(changed.items())[:3]]
    if len(changed) > 3:
        shown.append(f"+{len(changed) - 3} more")
    return " ".join([name, *shown])[:200]


def changed_params(params: dict[str, str], previous: dict[str, str] | None) -> dict[str, str]:
    """The params whose value differs from the previous run's (none when there is no previous run); paths,
    which name where files go, are left out."""
    if previous is None:
        return {}
    return {
        key: value
        for key, value in params.items()
        if previous.get(key) != value and not key.startswith("paths.")
    }


def run_description(
    headline: dict[str, float],
    changed: dict[str, str],
    previous: dict[str, str] | None,
    lineage: dict[str, str],
) -> str:
    """The run's description in MLflow's UI (markdown): the headline test metrics, what changed against the
    previous run, and where the run came from."""
    lines = ["**Test metrics**: " + (", ".join(f"{k} {v:.4f}" for k, v in headline.items()) or "none")]
    if previous is None:
        lines.append("**Changed**: the first run of this experiment.")
    elif changed:
        lines.append(
            "**Changed since the previous run**: " + ", ".join(f"`{k}` = {v}" for k, v in changed.items())
        )
    else:
        lines.append("**Changed since the previous run**: no param (the code or the data changed).")
    lines.append(
        f"**From** commit `{lineage.get('git_commit', 'unknown')[:12]}`"
        + (" with uncommitted changes" if lineage.get("git_dirty") == "true" else "")
        + f", data `{lineage.get('data_sha256', '')[:12]}`."
    )
    return "\n\n".join(lines)
