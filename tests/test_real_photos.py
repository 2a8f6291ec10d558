"""The 60 real photographs (cats and dogs, ../shared/data/cats-dogs, which a user's clone does not have: the test
skips without them) through `dvc repro export` as a user's own folder: the exported int8 file agrees with torch
on the test split as export.min_int8_agreement asks, and `reprotune predict` runs it after its check on this
CPU. A stress test (marker `slow`): about five minutes on 2 cores."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_project
from tests.test_pipeline import run

PHOTOS = ROOT.parent / "shared" / "data" / "cats-dogs"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not PHOTOS.is_dir(), reason="needs the real photos in ../shared/data/cats-dogs"),
]


def test_real_photos_ship_an_int8_file_that_agrees_and_predict_runs_it(tmp_path: Path):
    root = copy_project(tmp_path / "project")
    shutil.copytree(PHOTOS, root / "data" / "raw", dirs_exist_ok=True)
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "60 photos"], root)
    run(["dvc", "repro", "export"], root)

    card = json.loads((root / "models" / "export" / "model.json").read_text())
    exported = json.loads((root / "reports" / "export.json").read_text())
    minimum = card["int8"]["test_top1_agreement"]
    assert card["int8"]["shipped"], card["int8"]["why"]
    assert exported["onnx_int8"]["top1_agreement"] == minimum >= 0.99
    assert exported["onnx_fp32"]["top1_agreement"] == 1.0

    out = tmp_path / "labels.csv"
    reprotune = str(Path(sys.executable).parent / "reprotune")
    used = run(
        [reprotune, "predict", str(PHOTOS), "--model", str(root / "models" / "export"), "-o", str(out)],
        tmp_path,
    )
    assert "60 of 60 files labelled with" in used and "model.int8.onnx" in used, used
