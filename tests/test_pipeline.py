"""End to end: `dvc repro` in a temporary copy of the project on a tiny dataset, as a user runs it.

One `dvc repro` builds the project (`built`); a test that changes anything (params, the MLflow store, the
run record) works on its own copy of it (`workspace`), so the tests pass in any order or alone."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    PIPELINE_STAGES,
    ROOT,
    child_env,
    copy_project,
    make_class_folder,
    noisy_image,
    tiny_params_raw,
)

pytestmark = pytest.mark.e2e


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def run(args: list[str], cwd: Path) -> str:
    env = child_env(
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t"
    )
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


@contextlib.contextmanager
def loopback_server(command: list[str], health: str, program: str = "mlflow", **popen) -> Iterator[str]:
    """Run a command of this environment's (`program`: mlflow's, or reprotune's) that serves on 127.0.0.1
    (`{port}` in `command` becomes a free port), wait until `health` answers, yield its URL, and always stop
    it (with its whole process group) on the way out."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / program),
            *(part.replace("{port}", str(port)) for part in command),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **popen,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}{health}", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, f"{command[0]} did not start"
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def log_to_a_tracking_server(project: Path, tmp_path: Path) -> None:
    """A real `mlflow server` on a free loopback port: the track stage logs to it through
    MLFLOW_TRACKING_URI, and the run reads back through MLflow's client. The server is stopped after."""
    from mlflow.tracking import MlflowClient

    command = ["server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--artifacts-destination", str(tmp_path / "server-artifacts")]
    with loopback_server(command, "/health") as uri:
        done = subprocess.run(
            [sys.executable, "-m", "stages.track"],
            cwd=project,
            env=child_env(MLFLOW_TRACKING_URI=uri),
            capture_output=True,
            text=True,
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


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """A temporary copy of the project on a tiny dataset, committed to its own git repository, after one
    `dvc repro`. Tests may read it; a test that changes anything takes a `workspace` instead."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    root = copy_project(tmp_path / "project")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_raw(), sort_keys=False))
    make_class_folder(root / "data" / "raw", per_class=10)
    raw_before = tree_digest(root / "data" / "raw")
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "tiny"], root)
    first = run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "first repro"], root)
    return {"root": root, "tmp": tmp_path, "first": first, "raw_before": raw_before}


@pytest.fixture
def workspace(built: dict, tmp_path: Path) -> dict:
    """A private copy of the built project (git history, DVC cache, MLflow store and all) for one test."""
    root = tmp_path / "project"
    shutil.copytree(built["root"], root, symlinks=True)
    return built | {"root": root, "tmp": tmp_path}


def test_dvc_repro_end_to_end(built):
    root = built["root"]
    assert ran_stages(built["first"]) == PIPELINE_STAGES

    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    for model in ("baseline", "head", "finetune"):
        assert set(metrics[model]["test"]) >= {"accuracy", "macro_f1"}
        assert metrics[model]["test"]["accuracy"] > 0.5  # three colour classes: far above chance (1/3)
    cleaning = json.loads((root / "reports" / "cleaning.json").read_text())
    assert cleaning["scanned"] == 30 and cleaning["kept"] == 30
    for plot in ("confusion_finetune", "reliability", "training_curves", "mistakes_head", "per_class_f1"):
        assert (root / "reports" / "plots" / f"{plot}.png").stat().st_size > 1000
    report = (root / "reports" / "report.md").read_text()
    assert "reprotune-tiny-test" in report and "`ece`" in report
    assert "## Does transfer help?" in report and "## Would more labels help?" in report
    assert "## Which labels are probably wrong?" in report and "learning_curve.png" in report
    for name in (
        "learning_curve.json",
        "learning_curve.csv",
        "learning_curve.png",
        "label_issues.csv",
        "label_issues.png",
    ):
        assert (root / "reports" / name).stat().st_size > 0
    assert "ece_temperature_scaled" in metrics["finetune"]["test"]

    runs = mlflow_runs(root)
    assert len(runs) == 1
    run_data = runs[0].data
    written = yaml.safe_load((root / "params.yaml").read_text())["train_head"]["C"]
    assert run_data.params["train_head.C"] == json.dumps(written)  # as written: the values to choose from
    chosen = json.loads((root / "models" / "head" / "head.json").read_text())["C"]
    assert chosen in written and run_data.metrics["head.C"] == chosen  # and the one chosen on val
    assert run_data.params["backbone.name"] == "reprotune-tiny-test"
    assert run_data.metrics["finetune.test.accuracy"] == metrics["finetune"]["test"]["accuracy"]
    assert run_data.metrics["baseline.test.accuracy"] == metrics["baseline"]["test"]["accuracy"]
    assert (
        "label_issues.flagged" in run_data.metrics
        and "learning_curve.all_data_test_accuracy" in run_data.metrics
    )
    assert re.fullmatch(r"[0-9a-f]{40}", run_data.tags["git_commit"])
    assert re.fullmatch(r"[0-9a-f]{64}", run_data.tags["data_sha256"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    lineage = json.loads(
        Path(
            client.download_artifacts(runs[0].info.run_id, "lineage/dvc_outputs.json", str(root.parent))
        ).read_text()
    )
    assert lineage["dvc.featurize.data/features"].endswith(".dir")  # dvc.lock hashes of earlier stages
    assert not any(tag.startswith("dvc.") for tag in run_data.tags)  # kept out of the run page's tags
    assert runs[0].inputs.dataset_inputs[0].dataset.digest == lineage["dvc.clean.data/cleaned"][:36]
    assert runs[0].info.run_name == "reprotune-tiny-test full"  # backbone and strategy; the first run
    assert "finetune.test.accuracy" in run_data.tags["mlflow.note.content"]
    assert (
        client.get_experiment_by_name("reprotune").tags["mlflow.experimentKind"] == "custom_model_development"
    )
    assert runs[0].info.status == "FINISHED"

    # The registered model loads back by its alias (models from code: nothing unpickled), takes images of
    # any batch size, and labels them as evaluate did.
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model("models:/reprotune@candidate")
    predictions = pd.read_csv(root / "reports" / "predictions.csv")
    for size in (1, 7):
        rows = predictions.head(size)
        served = loaded.predict(pd.DataFrame({"image": [str(root / p) for p in rows["path"]]}))
        assert served["label"].tolist() == rows["finetune"].tolist() and not served["error"].any()
    assert loaded.metadata.metadata["temperature"] == metrics["finetune"]["test"]["temperature"]

    # The exported model is in the run. `reprotune predict` labels files with every model form alike, inside
    # the project and from a folder outside it, where only the model folder (or the store) tells it anything.
    exported = json.loads((root / "reports" / "export.json").read_text())
    assert exported["onnx_fp32"]["top1_agreement"] == 1.0
    assert runs[0].data.metrics["export.onnx_int8.accuracy"] == exported["onnx_int8"]["accuracy"]
    reprotune = str(Path(sys.executable).parent / "reprotune")
    elsewhere = built["tmp"] / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    store = ["--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"]
    rows = {}
    for model in ("models/export", "models/finetuned", "models:/reprotune@candidate"):
        for where, folder, extra in (("inside", root, []), ("outside", elsewhere, store)):
            out = built["tmp"] / f"predicted-{where}-{model.replace('/', '-').replace(':', '')}.csv"
            given = model if model.startswith("models:") or where == "inside" else str(root / model)
            images = "data/raw/red" if where == "inside" else str(root / "data" / "raw" / "red")
            run(
                [
                    reprotune,
                    "predict",
                    images,
                    "--model",
                    given,
                    "-o",
                    str(out),
                    *(extra if model.startswith("models:") else []),
                ],
                folder,
            )
            frame = pd.read_csv(out)
            frame["path"] = [Path(p).name for p in frame["path"]]
            rows[model, where] = frame
    assert len(rows["models/export", "inside"]) == 10  # the ten red images
    for model in ("models/export", "models/finetuned", "models:/reprotune@candidate"):
        assert rows[model, "inside"].equals(rows[model, "outside"])
    assert rows["models/export", "inside"].equals(rows["models:/reprotune@candidate", "inside"])
    labels = {
        model: rows[model, "inside"]["label"].tolist() for model in ("models/export", "models/finetuned")
    }
    assert labels["models/export"] == labels["models/finetuned"]  # the ONNX file agrees with torch on top-1

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root))
    assert "accuracy" in json.dumps(shown)


SERVED_IMPORTS = """
import json, sys
before = {name.split(".")[0] for name in sys.modules}
import mlflow, pandas as pd
from importlib.metadata import packages_distributions
from pathlib import Path
uri, images = sys.argv[1], sys.argv[2:]
mlflow.set_tracking_uri(uri)
served = mlflow.pyfunc.load_model("models:/reprotune@candidate").predict(pd.DataFrame({"image": images}))
assert not served["error"].any(), served
imported = {name.split(".")[0] for name in sys.modules} - before
owners = packages_distributions()
listed = Path(mlflow.pyfunc.get_model_dependencies("models:/reprotune@candidate")).read_text().split()
print(json.dumps({"imported": {name: owners[name] for name in sorted(imported) if name in owners}, "listed": listed}))
"""


# Imported when present, under `try: import ... except ImportError`: by tqdm (colorama), torch (orjson, pydot,
# psutil) and MLflow (psutil); each runs without them.
OPTIONAL_IMPORTS = {"colorama", "orjson", "psutil", "pydot"}


def closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install: each, and what each requires (extras left out)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import requires as requires_of

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    waiting = [Requirement(line) for line in requirements]
    while waiting:
        requirement = waiting.pop()
        name = canonicalize_name(requirement.name)
        if name in found or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        found.add(name)
        with contextlib.suppress(PackageNotFoundError):
            waiting += [Requirement(line) for line in requires_of(name) or []]
    return found


def test_the_registered_model_lists_every_distribution_it_imports(built):
    """track logs the served model's pip requirements (reprotune/serving/pyfunc.py SERVED_WITH) instead of
    letting MLflow infer them: loading and serving it in a fresh process imports nothing they do not install
    (reprotune itself travels as the model's code)."""
    from packaging.utils import canonicalize_name

    root = built["root"]
    images = sorted(str(p) for p in (root / "data" / "raw").rglob("*.png"))[:2]
    command = [sys.executable, "-c", SERVED_IMPORTS, f"sqlite:///{root / 'mlflow.db'}", *images]
    done = subprocess.run(command, cwd=root, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert {"torch", "onnxruntime"} <= {line.split("==")[0] for line in found["listed"]}
    installed = closure(found["listed"]) | {"reprotune"}
    missing = {
        module: owners
        for module, owners in found["imported"].items()
        if module not in OPTIONAL_IMPORTS
        and not {canonicalize_name(owner) for owner in owners} & installed  # a namespace has several owners
    }
    assert not missing, f"the served model imports modules its requirements do not install: {missing}"


def test_unchanged_repro_is_a_no_op_and_adds_no_run(built):
    root = built["root"]
    before = len(mlflow_runs(root))
    second = run(["dvc", "repro"], root)
    assert ran_stages(second) == [] and "up to date" in second
    assert len(mlflow_runs(root)) == before


@pytest.mark.slow  # stress tier (11 s) for CI's 15 minutes
def test_images_versioned_with_dvc_add_change_no_stage(workspace):
    """docs/performance.md's large-folder recipe: git lets go of data/raw (it tracks data/raw/.gitkeep, and
    here the images too), `dvc add data/raw` puts the images in DVC's cache (git holds one small .dvc file),
    and nothing the pipeline sees changes: the next repro runs no stage."""
    root = workspace["root"]
    run(["git", "rm", "-r", "-q", "--cached", "data/raw"], root)
    run(["dvc", "add", "-q", "data/raw"], root)
    assert (root / "data" / "raw.dvc").is_file() and "/raw" in (root / "data" / ".gitignore").read_text()
    assert ran_stages(run(["dvc", "repro"], root)) == []
    assert "up to date" in run(["dvc", "status"], root)


@pytest.mark.slow  # CI's time: tests/test_team_server.py logs the same way to a server on PostgreSQL
def test_logs_to_a_tracking_server(workspace):
    log_to_a_tracking_server(workspace["root"], workspace["tmp"])


def track_process(root: Path, uri: str, stall: bool = False) -> subprocess.Popen:
    """`python -m stages.track` against `uri`; with `stall`, it stops inside its MLflow run (just before the
    model is logged) and says `ready`, so that a test can signal it mid-run."""
    env = child_env(MLFLOW_TRACKING_URI=uri)
    # A shell's background job inherits SIGINT ignored, and Python keeps ignoring it: give the stage Ctrl-C's
    # usual handler, as in a terminal.
    code = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\nimport stages.track as track\n"
    if stall:
        code += (
            "import time\n"
            "def stalled(*args):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(300)\n"
            "track.log_model = stalled\n"
        )
    code += "track.main()\n"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def store_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("reprotune")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.mark.slow  # stress tier: a whole extra `dvc repro` of the tiny project (CI keeps within 15 minutes)
def test_parallel_writers_on_a_fresh_store(workspace):
    """Two track stages start at once on a store that does not exist yet: MLflow's first-use migrations
    collide without the store lock. Both runs land, FINISHED, each with its own model version."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workspace['tmp'] / 'fresh' / 'mlflow.db'}"
    writers = [track_process(workspace["root"], uri) for _ in range(2)]
    for writer in writers:
        _, stderr = writer.communicate(timeout=600)
        assert writer.returncode == 0, stderr[-3000:]
    runs = store_runs(uri)
    assert [r.info.status for r in runs] == ["FINISHED"] * 2
    versions = MlflowClient(uri).search_model_versions("name = 'reprotune'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert all(
        r.info.artifact_uri.startswith((workspace["tmp"] / "fresh" / "mlartifacts").as_uri()) for r in runs
    )


@pytest.mark.parametrize(
    "signum",
    # all in the stress tier (CI keeps within 15 minutes); SIGINT and SIGTERM unwind the same way, and
    # SIGKILL's clean-up is the next run's. tests/test_tracking.py unwinds SIGTERM in the fast tier
    [
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGKILL, marks=pytest.mark.slow),
    ],
)
def test_interrupted_track_leaves_no_finished_or_running_run(workspace, signum):
    """Stopped inside its MLflow run, track leaves that run FAILED (SIGINT, SIGTERM) and writes no run record.
    SIGKILL cannot be caught: the run stays RUNNING until the next track marks it FAILED and records the
    result once."""
    root = workspace["root"]
    record = root / "reports" / "mlflow_run.json"
    record_before = record.read_bytes()
    uri = f"sqlite:///{workspace['tmp'] / f'interrupted-{signum.name}' / 'mlflow.db'}"
    stalled = track_process(root, uri, stall=True)
    assert stalled.stdout.readline().strip() == "ready"
    stalled.send_signal(signum)
    try:
        _, stderr = stalled.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stalled.kill()
        pytest.fail(f"track ignored {signum.name}:\n{stalled.communicate()[1][-3000:]}")
    assert stalled.returncode == (-signum if signum == signal.SIGKILL else 128 + signum)
    assert "Traceback" not in stderr
    assert record.read_bytes() == record_before
    if signum != signal.SIGKILL:
        assert [r.info.status for r in store_runs(uri)] == ["FAILED"]
        return
    assert [r.info.status for r in store_runs(uri)] == ["RUNNING"]
    again = track_process(root, uri)
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-3000:]
    assert sorted(r.info.status for r in store_runs(uri)) == ["FAILED", "FINISHED"]


@pytest.mark.slow  # stress tier (17 s): CI keeps within 15 minutes; DVC's own lock is what it checks
def test_a_second_repro_while_one_runs_fails_fast_and_corrupts_nothing(workspace):
    root = workspace["root"]
    lock_before = (root / "dvc.lock").read_text()
    env = child_env()
    first = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "finetune"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in first.stdout:  # the first holds DVC's lock once its stage is running
            if "Running stage 'finetune'" in line:
                break
        started = time.monotonic()
        second = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
        assert time.monotonic() - started < 30
        assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower()
        first.stdout.read()
        assert first.wait(timeout=600) == 0
    finally:
        first.kill()
    assert (root / "dvc.lock").read_text() == lock_before  # fine-tuning again gave the same model
    assert ran_stages(run(["dvc", "repro"], root)) == []  # so nothing it feeds re-runs


@pytest.mark.slow
def test_dvc_queue_sweep_logs_every_experiment(workspace):
    """`dvc exp run --queue -S ...` three times, then `dvc queue start -j 2`: each experiment runs in a copy
    under .dvc/tmp/exps, and all three land in the project's store (fresh, so the two workers race to create
    it) with their DVC experiment name and the train_head.C they were given."""
    root = workspace["root"]
    (root / "mlflow.db").rename(root / "mlflow.db.before-sweep")
    try:
        values = ["0.25", "0.5", "2.0"]
        for value in values:
            run(["dvc", "exp", "run", "--queue", "-S", f"train_head.C={value}"], root)
        run(["dvc", "queue", "start", "-j", "2"], root)
        deadline = time.monotonic() + 900
        while re.search(r"\b(Queued|Running)\b", status := run(["dvc", "queue", "status"], root)):
            assert time.monotonic() < deadline, status
            time.sleep(2)
        assert status.count("Success") == 3, status
        # Read from a fresh process: this one's MLflow keeps a connection to the store renamed above.
        code = (
            "import json, sys\n"
            "from tests.test_pipeline import mlflow_runs\n"
            "from pathlib import Path\n"
            "print(json.dumps([[r.info.status, r.data.params['train_head.C'], r.data.tags.get('dvc_exp_name'),"
            " r.info.artifact_uri] for r in mlflow_runs(Path(sys.argv[1]))]))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(root)], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs = json.loads(done.stdout.strip().splitlines()[-1])
        assert sorted(c for _, c, _, _ in runs) == values
        assert [status for status, *_ in runs] == ["FINISHED"] * 3
        names = {name for _, _, name, _ in runs}
        assert len(names) == 3 and None not in names
        assert all(uri.startswith((root / "mlartifacts").as_uri()) for *_, uri in runs)
        assert not (root / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()
    finally:
        (root / "mlflow.db").unlink(missing_ok=True)
        (root / "mlflow.db.before-sweep").rename(root / "mlflow.db")


@pytest.mark.slow  # stress tier: a whole extra `dvc repro` of the tiny project (CI keeps within 15 minutes)
def test_a_train_head_change_reruns_only_what_depends_on_it(workspace):
    root = workspace["root"]
    before = mlflow_runs(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train_head"]["C"] = 0.75
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "train_head.C" in run(["dvc", "params", "diff"], root)
    third = run(["dvc", "repro"], root)
    assert ran_stages(third) == [
        "train_head",
        "learning_curve",
        "label_issues",
        "finetune",
        "distill",
        "adapt",
        "evaluate",
        "export",
        "track",
    ]
    runs = mlflow_runs(root)
    assert len(runs) == len(before) + 1
    differing = {k for k in runs[-2].data.params if runs[-2].data.params[k] != runs[-1].data.params.get(k)}
    assert differing == {"train_head.C"}
    assert tree_digest(root / "data" / "raw") == workspace["raw_before"]


@pytest.mark.slow  # stress tier: a whole extra `dvc repro` of the tiny project (CI keeps within 15 minutes)
def test_turning_distill_on_reruns_only_distill_onward_and_registers_the_student(workspace):
    """The one-line switch (docs/distillation.md), here with the tiny backbone as student and an unlabelled
    folder: only distill and what reads it re-run; the students are scored, exported and registered."""
    import mlflow
    import pandas as pd

    root = workspace["root"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["distill"].update(enabled=True, student="reprotune-tiny-test", epochs=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for n in range(4):
        noisy_image((40, 180, 60), 555_000 + n).save(root / "data" / "unlabeled" / f"u{n}.png")
    assert ran_stages(run(["dvc", "repro"], root)) == ["distill", "evaluate", "export", "track"]

    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert {"distilled", "label_only"} <= set(metrics)
    assert "## Distillation" in (root / "reports" / "report.md").read_text()
    assert json.loads((root / "reports" / "latency.json").read_text())["student_ms"] > 0
    exported = json.loads((root / "reports" / "export.json").read_text())
    assert exported["student_onnx_fp32"]["top1_agreement"] == 1.0
    [latest] = mlflow_runs(root)[-1:]
    assert latest.data.metrics["distilled.test.accuracy"] == metrics["distilled"]["test"]["accuracy"]
    assert latest.data.metrics["distill.distilled.unlabeled_images"] == 4
    assert "latency.student_speedup" in latest.data.metrics
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    student = mlflow.pyfunc.load_model("models:/reprotune-student@candidate")
    predictions = pd.read_csv(root / "reports" / "predictions.csv").head(5)
    served = student.predict(pd.DataFrame({"image": [str(root / p) for p in predictions["path"]]}))
    assert served["label"].tolist() == predictions["distilled"].tolist()

    params["distill"]["enabled"] = False  # off again: the DAG is valid and the students are gone
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], root)
    assert "distilled" not in json.loads((root / "reports" / "metrics.json").read_text())


@pytest.mark.slow  # stress tier: a whole extra `dvc repro` of the tiny project (CI keeps within 15 minutes)
def test_adapting_to_a_target_folder_reruns_only_adapt_onward(workspace):
    """Target images alone change nothing (`adapt.method: none`); with a method, only adapt and what reads
    it re-run, and the comparison reaches metrics.json, the report and MLflow."""
    from PIL import ImageOps

    root = workspace["root"]
    for index, colour in enumerate([(200, 40, 40), (40, 180, 60), (50, 60, 210)]):
        for n in range(4):
            picture = ImageOps.invert(noisy_image(colour, 4_400_000 + index * 100 + n))
            picture.save(root / "data" / "target" / f"{index}-{n}.png")
    assert ran_stages(run(["dvc", "repro"], root)) == ["adapt"]  # and its outputs are unchanged, so no more
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adapt"]["method"] = "coral"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(["dvc", "repro"], root)) == ["adapt", "evaluate", "export", "track"]
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert set(metrics["adapt"]) == {"head_source_only", "head_adapted"}
    report = (root / "reports" / "report.md").read_text()
    assert "## Domain adaptation" in report and "cannot be verified" in report  # no target labels
    latest = mlflow_runs(root)[-1]
    assert "adapt.head.adapted.domain_accuracy" in latest.data.metrics


@pytest.mark.slow  # stress tier: a whole extra `dvc repro` of the tiny project (CI keeps within 15 minutes)
def test_a_relabel_row_reruns_clean_and_what_it_changes_and_leaves_the_images_alone(workspace):
    """The user's fix for a label issue: a row in data/relabel.csv, versioned, applied by clean."""
    root = workspace["root"]
    issues = (root / "reports" / "label_issues.csv").read_text().splitlines()
    assert issues[0].startswith("rank,path,split,given_label,suggested_label,score")
    moved = "data/raw/red/000.png"
    (root / "data" / "relabel.csv").write_text(f"path,label\n{moved},blue\n")
    output = run(["dvc", "repro"], root)
    assert ran_stages(output)[:2] == ["clean", "split"] and "track" in ran_stages(output)
    cleaning = json.loads((root / "reports" / "cleaning.json").read_text())
    assert cleaning["relabelled_files"] == [{"path": moved, "from": "red", "to": "blue"}]
    assert cleaning["classes_after"] == {"blue": 11, "green": 10, "red": 9}
    assert tree_digest(root / "data" / "raw") == workspace["raw_before"]


@pytest.mark.slow  # CI's time on this 2-core machine (its run varied from 822 to 961 s)
def test_a_colleague_pulls_the_trained_result_from_a_dvc_remote(workspace):
    """`dvc push` to a shared remote (here a local path, as a mounted share would be), a second clone, `dvc pull`:
    the models and reports arrive without training, the pipeline is up to date, and nothing is logged again."""
    root, tmp = workspace["root"], workspace["tmp"]
    run(["dvc", "remote", "add", "-d", "shared", str(tmp / "remote")], root)
    run(["git", "commit", "-q", "-am", "a shared DVC remote"], root)
    pushed = run(["dvc", "push"], root)
    assert "pushed" in pushed
    colleague = tmp / "colleague"
    run(["git", "clone", "-q", str(root), str(colleague)], tmp)
    assert not (colleague / "models" / "finetuned").exists()
    run(["dvc", "pull"], colleague)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], colleague)
    assert ran_stages(run(["dvc", "repro"], colleague)) == []
    for name in (
        "reports/metrics.json",
        "models/finetuned/model.safetensors",
        "models/export/model.onnx",
        "models/head/head.safetensors",
        "reports/mlflow_run.json",
    ):
        assert (colleague / name).read_bytes() == (root / name).read_bytes(), name
    assert not (colleague / "mlflow.db").exists()  # the pull logged nothing
    # Recording the pulled result in the colleague's own local store is one forced stage, logged once.
    run(["dvc", "repro", "--force", "-s", "track"], colleague)
    assert len(mlflow_runs(colleague)) == 1
    assert "Data and pipelines are up to date" in run(["dvc", "status"], colleague)


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
        "error: params.yaml: train_head.Cee: unknown key; train_head accepts: C, selection_metric, max_iter, class_weights, class_weight_beta",
        "error: params.yaml: finetune.lr: Input should be greater than 0 (got -1)",
    ]
    assert not (project / "data" / "ingested").exists()


@pytest.mark.slow  # CI's time; the Banking77 subset run (stress tier too) serves over HTTP as well
def test_the_registered_model_is_served_over_http(built):
    """`reprotune serve` (MLflow's scoring server) on a free loopback port answers a POSTed JPEG with its label, answers a
    non-image with an error row, refuses a malformed request, and keeps serving; it is stopped after."""
    import base64
    import io

    from PIL import Image

    root = built["root"]
    # `reprotune serve` with no --model: the project's registered model at its alias, from the project's store
    command = ["serve", "--port", "{port}"]
    env = child_env()

    def post(uri: str, body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{uri}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def images(*payloads: bytes) -> bytes:
        rows = [[base64.b64encode(p).decode("ascii")] for p in payloads]
        return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()

    with loopback_server(command, "/ping", program="reprotune", cwd=root, env=env) as uri:
        jpeg = io.BytesIO()
        Image.open(root / "data" / "raw" / "red" / "000.png").convert("RGB").save(jpeg, "JPEG", quality=90)
        status, answer = post(uri, images(jpeg.getvalue(), b"not an image", jpeg.getvalue()[:200]))
        assert status == 200, answer
        labels = [row["label"] for row in answer["predictions"]]
        errors = [row["error"] for row in answer["predictions"]]
        assert labels[0] == "red" and errors[0] == ""
        assert errors[1].startswith("not_an_image") and errors[2] and labels[1:] == ["", ""]
        status, _ = post(uri, b"{not json")
        assert 400 <= status < 500
        assert urllib.request.urlopen(f"{uri}/ping", timeout=5).status == 200  # still serving
    # The exported folder, without the registry, serves the same answer.
    exported = ["serve", "--model", str(root / "models" / "export"), "--port", "{port}"]
    with loopback_server(exported, "/ping", program="reprotune", cwd=built["tmp"], env=env) as uri:
        status, answer = post(uri, images(jpeg.getvalue()))
        assert status == 200 and answer["predictions"][0]["label"] == "red"
