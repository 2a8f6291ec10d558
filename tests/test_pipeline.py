"""End to end: `dvc repro` in a temporary copy of the project on a tiny dataset, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, make_class_folder, tiny_params_raw


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def run(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `python`
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def mlflow_runs(project: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reprotune")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_to_a_tracking_server(project: Path, tmp_path: Path) -> None:
    """A real `mlflow server` on a free loopback port: the track stage logs to it through
    MLFLOW_TRACKING_URI, and the run reads back through MLflow's client. The server is stopped after."""
    from mlflow.tracking import MlflowClient

    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        env["MLFLOW_TRACKING_URI"] = uri
        done = subprocess.run(
            [sys.executable, "-m", "stages.track"], cwd=project, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("reprotune").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert "finetune.test.accuracy" in runs[0].data.metrics
        assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {
            "reports",
            "models",
            "lineage",
        }
        assert client.get_model_version_by_alias("reprotune", "candidate").version == "1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params_raw(), sort_keys=False))
    make_class_folder(project / "data" / "raw", per_class=10)
    raw_before = tree_digest(project / "data" / "raw")
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "tiny"], project)

    first = run(["dvc", "repro"], project)
    assert ran_stages(first) == [
        "ingest",
        "clean",
        "split",
        "featurize",
        "train_head",
        "finetune",
        "evaluate",
        "track",
    ]

    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    for model in ("head", "finetune"):
        assert set(metrics[model]["test"]) >= {"accuracy", "macro_f1"}
        assert metrics[model]["test"]["accuracy"] > 0.5  # three colour classes: far above chance (1/3)
    cleaning = json.loads((project / "reports" / "cleaning.json").read_text())
    assert cleaning["scanned"] == 30 and cleaning["kept"] == 30
    for plot in ("confusion_finetune", "reliability", "training_curves", "mistakes_head", "per_class_f1"):
        assert (project / "reports" / "plots" / f"{plot}.png").stat().st_size > 1000
    report = (project / "reports" / "report.md").read_text()
    assert "reprotune-tiny-test" in report and "`ece`" in report
    assert "ece_temperature_scaled" in metrics["finetune"]["test"]

    runs = mlflow_runs(project)
    assert len(runs) == 1
    run_data = runs[0].data
    assert (
        run_data.params["train_head.C"] == "1.0" and run_data.params["backbone.name"] == "reprotune-tiny-test"
    )
    assert run_data.metrics["finetune.test.accuracy"] == metrics["finetune"]["test"]["accuracy"]
    assert re.fullmatch(r"[0-9a-f]{40}", run_data.tags["git_commit"])
    assert re.fullmatch(r"[0-9a-f]{64}", run_data.tags["data_sha256"])
    assert run_data.tags["dvc.featurize.data/features"].endswith(".dir")  # dvc.lock hashes of earlier stages
    assert runs[0].inputs.dataset_inputs[0].dataset.digest == run_data.tags["dvc.clean.data/cleaned"][:36]
    assert runs[0].info.status == "FINISHED"

    # The registered model loads back by its alias, unpickling nothing, and predicts as evaluate did.
    import mlflow
    from PIL import Image

    from reprotune import params as params_module
    from reprotune.backbones import load_backbone

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model("models:/reprotune@candidate")
    predictions = (project / "reports" / "predictions.csv").read_text().splitlines()
    first = dict(zip(predictions[0].split(","), predictions[1].split(","), strict=False))
    tiny = params_module.validate(tiny_params_raw())
    image = load_backbone(tiny.backbone).data.eval_transform()(
        Image.open(project / first["path"]).convert("RGB")
    )
    logits = loaded.predict(image.unsqueeze(0).numpy())
    classes = sorted(["red", "green", "blue"])
    assert classes[int(logits.argmax())] == first["finetune"]

    second = run(["dvc", "repro"], project)
    assert ran_stages(second) == [] and "up to date" in second
    assert len(mlflow_runs(project)) == 1

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project))
    assert "head.test.accuracy" in json.dumps(shown) or "accuracy" in json.dumps(shown)

    log_to_a_tracking_server(project, tmp_path)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_head"]["C"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "train_head.C" in run(["dvc", "params", "diff"], project)
    third = run(["dvc", "repro"], project)
    assert ran_stages(third) == ["train_head", "finetune", "evaluate", "track"]
    runs = mlflow_runs(project)
    assert len(runs) == 2
    differing = {k for k in runs[0].data.params if runs[0].data.params[k] != runs[1].data.params.get(k)}
    assert differing == {"train_head.C"}

    assert tree_digest(project / "data" / "raw") == raw_before


@pytest.mark.slow
def test_bad_params_stop_a_stage_before_it_writes(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    raw = tiny_params_raw()
    raw["finetune"]["lr"] = -1
    raw["train_head"]["Cee"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "stages.ingest"], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "error: params.yaml: train_head.Cee: unknown key (check the spelling against the schema in reprotune/params.py)",
        "error: params.yaml: finetune.lr: Input should be greater than 0 (got -1)",
    ]
    assert not (project / "data" / "ingested").exists()
