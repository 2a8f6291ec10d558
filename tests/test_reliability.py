"""Stop it anywhere, run it twice: the same outputs, byte for byte, as an uninterrupted run.

Slow (minutes): `pytest -m slow tests/test_reliability.py`. Every stage is interrupted twice, each time at a seeded
random point of its uninterrupted duration, with a seeded choice of SIGINT, SIGTERM or SIGKILL sent to the
whole `dvc repro` process group; `dvc repro --no-run-cache` then has to re-run it and finish with every
output hash in dvc.lock equal to the uninterrupted run's.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import PIPELINE_STAGES, child_env, copy_project, make_class_folder, tiny_params_raw
from tests.test_pipeline import mlflow_runs, run

pytestmark = pytest.mark.slow

STAGES = PIPELINE_STAGES
# track's output names the MLflow run it created: a new run is a new id by design.
RUN_SPECIFIC = {"reports/mlflow_run.json"}


def output_hashes(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for entry in lock["stages"].values()
        for out in entry.get("outs", [])
        if out["path"] not in RUN_SPECIFIC
    }


def build(folder: Path) -> Path:
    project = copy_project(folder)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params_raw(), sort_keys=False))
    make_class_folder(project / "data" / "raw", per_class=10)
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "tiny"], project)
    return project


RESET_SIGINT_THEN_EXEC = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"


def start_stage(project: Path, stage: str) -> subprocess.Popen:
    """`dvc repro --force --single-item <stage>`, returned once the stage's command is running."""
    process = subprocess.Popen(
        # Through a Python that restores Ctrl-C's default first: a shell's background job (CI, `&`) starts
        # with SIGINT ignored, and an ignored signal stays ignored across exec, in DVC and in the stage.
        [sys.executable, "-c", RESET_SIGINT_THEN_EXEC, "dvc", "repro", "--force", "--single-item", stage],
        cwd=project,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a signal reaches DVC and the stage, as Ctrl-C does
    )
    for line in process.stdout:
        if f"Running stage '{stage}'" in line:
            break
    return process


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """The uninterrupted run, stage by stage, with how long each stage's command took."""
    project = build(tmp_path_factory.mktemp("reliability") / "project")
    seconds = {}
    for stage in STAGES:
        process = start_stage(project, stage)
        started = time.monotonic()
        process.communicate(timeout=600)
        assert process.returncode == 0, stage
        seconds[stage] = time.monotonic() - started
    return {"project": project, "hashes": output_hashes(project), "seconds": seconds}


def test_repro_forced_twice_and_in_a_fresh_clone_gives_identical_outputs(baseline, tmp_path: Path):
    project = baseline["project"]
    run(["dvc", "repro", "--force", "--no-run-cache"], project)
    assert output_hashes(project) == baseline["hashes"]
    clone = build(tmp_path / "clone")
    run(["dvc", "repro"], clone)
    assert output_hashes(clone) == baseline["hashes"]


@pytest.mark.parametrize("point", [1, 2])
@pytest.mark.parametrize("stage", STAGES)
def test_interrupted_anywhere_then_repro_gives_the_same_outputs(baseline, stage: str, point: int):
    project = baseline["project"]
    chance = random.Random(f"interrupt-{stage}-{point}")
    signum = chance.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
    victim = start_stage(project, stage)
    time.sleep(chance.uniform(0.05, 0.8) * baseline["seconds"][stage])
    os.killpg(victim.pid, signum)
    victim.communicate(timeout=120)
    assert victim.returncode != 0, f"{stage} finished before {signum.name} reached it"

    # Without DVC's run-cache, which would otherwise restore the stage's outputs instead of re-running it.
    run(["dvc", "repro", "--no-run-cache"], project)
    assert output_hashes(project) == baseline["hashes"], f"{stage} after {signum.name}"
    assert not list(project.rglob("*.partial-*")), "a temporary output was left behind"
    statuses = [r.info.status for r in mlflow_runs(project)]
    assert "RUNNING" not in statuses  # a killed track's run is marked FAILED by the next track
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["finetune"]["test"]["accuracy"] > 0.5
