"""A team's MLflow server on PostgreSQL, for real: a PostgreSQL cluster in a temporary directory on a free
loopback port, `mlflow server` on it with served artifacts, and the track stage of two separate clones logging
to it; the alias moves, a third process loads the model by alias, `compare` reads the server, and a server
that goes away mid-pipeline is one clear error that leaves every output intact. Everything started here is
stopped here, also on failure."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import child_env
from tests.test_pipeline import built, free_port, loopback_server, workspace  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two clones' pipelines: the stress tier


def postgres_bin() -> Path | None:
    """The folder holding initdb and postgres (Debian keeps them out of PATH, under /usr/lib/postgresql)."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster listening on 127.0.0.1 only (no Unix socket), trust authentication
    for the `mlflow` role, an `mlflow` database; yields its SQLAlchemy URI and always stops and deletes it."""
    import psycopg

    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (initdb and postgres not found)")
    folder = Path(tempfile.mkdtemp(prefix="reprotune-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run the cluster as `nobody`
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    data, port = folder / "data", free_port()
    server = None
    try:
        subprocess.run(
            [
                *as_user,
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "mlflow",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        server = subprocess.Popen(
            [
                *as_user,
                str(binaries / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={port} user=mlflow dbname=postgres", autocommit=True
                ) as db:
                    db.execute("CREATE DATABASE mlflow")
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline and server.poll() is None, "PostgreSQL did not start"
                time.sleep(0.3)
        yield f"postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGINT)  # fast shutdown
            server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def mlflow_server(backend: str, artifacts: Path):
    return loopback_server(
        [
            "server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1",
            "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(artifacts),
        ],
        "/health",
    )  # fmt: skip


def track(project: Path, uri: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.track"],
        cwd=project,
        env=child_env(MLFLOW_TRACKING_URI=uri, **extra),
        capture_output=True,
        text=True,
    )


def test_two_clones_log_to_a_team_server_on_postgresql(workspace):  # noqa: F811 (the fixture)
    from mlflow.tracking import MlflowClient

    first, tmp = workspace["root"], workspace["tmp"]
    second = tmp / "second-clone"
    shutil.copytree(first, second, symlinks=True)
    with postgres_server() as database, mlflow_server(database, tmp / "team-artifacts") as uri:
        for project in (first, second):
            done = track(project, uri)
            assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("reprotune")
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
        for run_ in runs:
            assert run_.data.params["backbone.name"] == "reprotune-tiny-test"
            assert (
                "baseline.test.accuracy" in run_.data.metrics
                and "finetune.test.accuracy" in run_.data.metrics
            )
            assert {a.path for a in client.list_artifacts(run_.info.run_id)} >= {
                "reports",
                "models",
                "lineage",
            }
        assert client.get_model_version_by_alias("reprotune", "candidate").version == "2"  # the newer one

        # A third process, knowing only the server, loads the model by its alias and labels an image.
        image = str(first / "data" / "raw" / "red" / "000.png")
        loaded = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, mlflow, pandas as pd\n"
                "model = mlflow.pyfunc.load_model('models:/reprotune@candidate')\n"
                "print(model.predict(pd.DataFrame({'image': [sys.argv[1]]}))['label'][0])\n",
                image,
            ],
            env=child_env(MLFLOW_TRACKING_URI=uri),
            capture_output=True,
            text=True,
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert loaded.stdout.strip() in {"red", "green", "blue"}
        compared = subprocess.run(
            [sys.executable, "-m", "reprotune.compare", "--last", "2"],
            cwd=first,
            env=child_env(MLFLOW_TRACKING_URI=uri),
            capture_output=True,
            text=True,
        )
        assert compared.returncode == 0, compared.stderr[-3000:]
        assert all(r.info.run_name in compared.stdout for r in runs)  # both runs, read from the server
        assert "baseline.test.accuracy" in compared.stdout

        # The server goes away while the pipeline runs: a params change re-runs track, which cannot log.
        params = yaml.safe_load((first / "params.yaml").read_text())
        params["track"]["alias"] = "team"
        (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        before = {p: p.read_bytes() for p in (first / "models").rglob("*") if p.is_file()}
        with mlflow_server(database, tmp / "team-artifacts") as second_uri:
            pass  # started and stopped: a URI nobody answers at
        env = child_env(
            MLFLOW_TRACKING_URI=second_uri,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
            MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        )
        failed = subprocess.run(["dvc", "repro"], cwd=first, env=env, capture_output=True, text=True)
        assert failed.returncode != 0
        assert (
            f"the MLflow tracking server at {second_uri} (MLFLOW_TRACKING_URI) did not answer"
            in failed.stderr
        )
        assert "Traceback" not in failed.stderr
        assert {p: p.read_bytes() for p in (first / "models").rglob("*") if p.is_file()} == before
        # Back up: the next `dvc repro` logs the result, once, and points the new alias at it.
        again = subprocess.run(
            ["dvc", "repro"],
            cwd=first,
            env=child_env(MLFLOW_TRACKING_URI=uri),
            capture_output=True,
            text=True,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert re_ran(again.stdout) == ["track"]
        assert len(client.search_runs([experiment.experiment_id])) == 3
        assert client.get_model_version_by_alias("reprotune", "team").version == "3"


def re_ran(output: str) -> list[str]:
    import re

    return re.findall(r"Running stage '(\w+)'", output)
