"""End to end on the built-in text sample: `dvc repro` on Banking77 with the shipped sentence encoder, as a user
runs it after setting `ingest.modality: text` (about 8 minutes on 2 cores), then predict on new texts."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import PIPELINE_STAGES, copy_project
from tests.test_pipeline import run

pytestmark = pytest.mark.e2e


def test_the_text_sample_end_to_end(tmp_path: Path):
    root = copy_project(tmp_path / "project")
    params = (root / "params.yaml").read_text()
    assert "\n  modality: auto " in params
    (root / "params.yaml").write_text(params.replace("\n  modality: auto ", "\n  modality: text ", 1))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "text sample"], root)
    output = run(["dvc", "repro"], root)
    assert re.findall(r"Running stage '(\w+)'", output) == PIPELINE_STAGES

    reports = root / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    # The targets on Banking77: frozen MiniLM + logistic regression about 0.80 (published), fine-tuned
    # sentence encoders 0.93.
    assert metrics["head"]["test"]["accuracy"] >= 0.80
    assert metrics["finetune"]["test"]["accuracy"] >= 0.90
    assert metrics["baseline"]["test"]["accuracy"] < metrics["head"]["test"]["accuracy"]
    assert 0.3 < metrics["zeroshot"]["test"]["accuracy"] < metrics["head"]["test"]["accuracy"]
    assert metrics["head"]["test"]["n"] == 3078  # 3,080 test queries, 2 dropped as a label conflict

    cleaning = json.loads((reports / "cleaning.json").read_text())
    assert cleaning["scanned"] == 13083 and cleaning["dropped_by_reason"] == {"label_conflict": 4}
    curve = json.loads((reports / "learning_curve.json").read_text())
    assert curve["points"][0]["labels_per_class"] == 0
    report = (reports / "report.md").read_text()
    assert "built-in text sample (Banking77)" in report and "## Most confident mistakes (test)" in report
    run_record = json.loads((reports / "mlflow_run.json").read_text())
    assert run_record["model_version"] is None  # no served model for text (export.md says why)
    assert "up to date" in run(["dvc", "status"], root)

    queries = root / "queries.txt"
    queries.write_text(
        "I still have not received my new card, when will it arrive?\nHow do I top up by card?\n"
    )
    labels = run(
        [sys.executable, "-m", "reprotune.predict", "--model", "models/finetuned", str(queries)], root
    )
    rows = [row for row in csv.DictReader(io.StringIO(labels)) if row["path"].startswith(str(queries))]
    assert [row["path"].rsplit(":", 1)[1] for row in rows] == ["1", "2"]
    assert rows[0]["label"] == "card_arrival"
