import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprotune.pipeline.layout import project_root
from reprotune.reporting.tracking import experiment_lineage, stage_output_hashes, tracking_uri
from tests.conftest import ROOT


def test_store_resolves_to_the_project_from_dvc_experiment_copies(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub"
    copy.mkdir(parents=True)
    assert project_root(copy) == tmp_path / "project"
    assert tracking_uri(copy) == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    assert tracking_uri(copy) == "http://127.0.0.1:5555"


def test_lineage_from_dvc(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-hare")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert experiment_lineage() == {"dvc_exp_name": "brisk-hare"}
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  clean:\n    cmd: python -m stages.clean\n    outs:\n"
        "    - path: data/cleaned\n      hash: md5\n      md5: abc.dir\n"
    )
    assert stage_output_hashes(lock) == {"dvc.clean.data/cleaned": "abc.dir"}
    assert stage_output_hashes(tmp_path / "missing.lock") == {}


def test_abandoned_running_runs_are_closed(tmp_path: Path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    import stages.track as track

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("e")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = track.socket.gethostname()
    abandoned = client.create_run(experiment, tags={"host": host, "pid": dead.stdout.strip()})
    alive = client.create_run(experiment, tags={"host": host, "pid": str(os.getpid())})
    elsewhere = client.create_run(experiment, tags={"host": "another-machine", "pid": dead.stdout.strip()})
    track.close_abandoned_runs(experiment)
    status = {
        run_id: client.get_run(run_id).info.status
        for run_id in (abandoned.info.run_id, alive.info.run_id, elsewhere.info.run_id)
    }
    assert list(status.values()) == ["FAILED", "RUNNING", "RUNNING"]


@pytest.mark.e2e
def test_sigterm_unwinds_and_leaves_no_partial_output(tmp_path: Path):
    script = (
        "import time\n"
        "from pathlib import Path\n"
        "from reprotune.pipeline import stage\n"
        "from reprotune.pipeline.atomic_io import atomic_output\n"
        "def work(params):\n"
        f"    with atomic_output(Path({str(tmp_path / 'out.txt')!r})) as temporary:\n"
        "        temporary.write_text('half')\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "stage.run(work, resolved=False)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    assert any(tmp_path.iterdir())  # the temporary exists while the stage works
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []  # no half-written output, no temporary


def test_comparison_shows_what_differs(tmp_path: Path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from reprotune.serving.compare import comparison

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("e")
    for c, accuracy in (("1.0", 0.9), ("0.5", 0.92)):
        with mlflow.start_run():
            mlflow.log_params({"train_head.C": c, "backbone.name": "b"})
            mlflow.log_metric("finetune.test.accuracy", accuracy)
    runs = client.search_runs(
        [client.get_experiment_by_name("e").experiment_id], order_by=["attributes.start_time DESC"]
    )
    table = comparison(runs)
    assert "train_head.C" in table.columns and "backbone.name" not in table.columns
    assert table["finetune.test.accuracy"].tolist() == [0.92, 0.9]  # newest first, as searched


def test_compare_lists_every_models_metrics_sorts_and_prints_csv(tmp_path: Path, monkeypatch, capsys):
    import mlflow

    from reprotune.serving.compare import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("mine")
    for name, accuracy in (("first", 0.7), ("second", 0.9), ("third", 0.8)):
        with mlflow.start_run(run_name=name):
            mlflow.log_params({"finetune.lr": str(accuracy)})
            mlflow.log_metrics(
                {
                    "finetune.test.accuracy": accuracy,
                    "zero_shot.test.accuracy": 0.5,
                    "distilled.test.macro_f1": accuracy - 0.1,
                    "adapt.finetune.adapted.target_test.accuracy": 0.6,
                    "finetune.epoch.val_accuracy": 0.1,  # an epoch curve: not a column unless asked for
                }
            )
    monkeypatch.chdir(tmp_path)  # no params.yaml here: --experiment names it
    args = [
        "--experiment",
        "mine",
        "--tracking-uri",
        uri,
        "--sort",
        "finetune.test.accuracy",
        "--format",
        "csv",
    ]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    assert {"zero_shot.test.accuracy", "distilled.test.macro_f1", "finetune.lr"} <= set(header)
    assert "adapt.finetune.adapted.target_test.accuracy" in header
    assert "finetune.epoch.val_accuracy" not in header
    assert [line.split(",")[0] for line in lines[1:]] == ["second", "third", "first"]
    assert main([*args[:4], "--metrics", "finetune.test.*", "--filter", "params.`finetune.lr` = '0.7'"]) == 0
    out = capsys.readouterr().out
    assert "first" in out and "second" not in out and "zero_shot" not in out
    assert main([*args[:4], "--sort", "nothing"]) == 1
    assert "--sort nothing: not a column" in capsys.readouterr().err
    assert main(["--experiment", "absent", "--tracking-uri", uri]) == 1


def test_run_names_and_descriptions_say_what_changed():
    from reprotune.reporting.tracking import changed_params, run_description, run_name

    now = {"backbone.name": "efficientnet_lite0", "finetune.strategy": "full", "finetune.lr": "0.001"}
    assert run_name(now, None, None) == "efficientnet_lite0 full"
    before = now | {"finetune.lr": "0.01"}
    assert run_name(now, before, None) == "efficientnet_lite0 full lr=0.001"
    assert run_name(now, before, "exp-3f2a1") == "exp-3f2a1"  # dvc exp run's name wins
    changed = changed_params(now, before)
    text = run_description({"finetune.test.accuracy": 0.91}, changed, before, {"git_commit": "ab" * 20})
    assert (
        "finetune.test.accuracy 0.9100" in text and "`finetune.lr` = 0.001" in text and "abababababab" in text
    )
    other = now | {"finetune.strategy": "frozen"}
    assert run_name(other, now, None) == "efficientnet_lite0 frozen"  # the strategy is in the name already
    assert "`finetune.strategy` = frozen" in run_description({}, changed_params(other, now), now, {})
