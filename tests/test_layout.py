"""dvc.yaml and the code must agree on every path: DVC only tracks and cleans what it is told about."""

from pathlib import Path

import pytest
import yaml

from reprotune import params as params_module
from reprotune.layout import Layout, atomic_output
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
