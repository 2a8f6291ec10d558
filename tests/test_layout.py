"""dvc.yaml and the code must agree on every path: DVC only tracks and cleans what it is told about."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reprotune.pipeline import params as params_module
from reprotune.pipeline.atomic_io import atomic_output
from reprotune.pipeline.layout import Layout
from tests.conftest import ROOT


def declared_paths() -> set[str]:
    """Every dep/out/metric/plot path in dvc.yaml, with ${paths.*} filled from params.yaml."""
    params = params_module.load(ROOT / "params.yaml")
    text = (ROOT / "dvc.yaml").read_text()
    for key, value in params.paths.model_dump().items():
        text = text.replace("${paths." + key + "}", value)
    found = set()
    for stage in yaml.safe_load(text)["stages"].values():
        for section in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                found.add(entry if isinstance(entry, str) else next(iter(entry)))
    return found


def test_every_output_the_code_writes_is_declared():
    layout = Layout(params_module.load(ROOT / "params.yaml").paths)
    declared = declared_paths()
    written = [
        layout.ingested,
        layout.cleaned,
        layout.cleaning_report,
        layout.cleaning_summary,
        layout.splits,
        layout.split_report,
        layout.features,
        layout.head,
        layout.finetuned,
        layout.finetune_history,
        layout.metrics,
        layout.per_class,
        layout.predictions,
        layout.plots,
        layout.exported,
        layout.export_report,
        layout.export_summary,
        layout.mlflow_run,
    ]
    assert {p.as_posix() for p in written} <= declared, {p.as_posix() for p in written} - declared


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with atomic_output(tmp_path / "folder") as temporary:
        temporary.mkdir()
        (temporary / "a").write_text("x")
    assert (tmp_path / "folder" / "a").read_text() == "x"


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as a SIGKILLed stage leaves behind
    stale = tmp_path / f".out.json.partial-{dead.pid}"
    stale.mkdir()
    live = tmp_path / f".out.json.partial-{os.getppid()}"  # a live writer's temporary stays
    live.write_text("busy")
    other = tmp_path / f".other.json.partial-{dead.pid}"  # another target's: not this write's business
    other.write_text("x")
    with atomic_output(tmp_path / "out.json") as temporary:
        temporary.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", live.name, other.name])
