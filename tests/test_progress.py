"""Progress that reaches logs: a bar on a terminal, and off one (CI, nohup, a scheduler) a line at a steady
interval with the count, the rate and the time left."""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reprotune.reporting import progress as progress_module
from tests.conftest import PIPELINE_STAGES, ROOT, child_env, make_class_folder, tiny_params_raw


def test_off_a_terminal_lines_come_at_the_interval_with_rate_and_time_left(monkeypatch, caplog):
    clock = iter(range(100))
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    monkeypatch.setenv("REPROTUNE_PROGRESS_SECONDS", "3")
    with caplog.at_level(logging.INFO, logger="reprotune.progress"):
        assert list(progress_module.progress(range(10), "featurize", unit="batch")) == list(range(10))
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "featurize: 3/10 batch (30%), 1 batch/s, 7s left"  # one tick per item, 3 s apart
    assert len(lines) == 3


def test_a_loop_of_unknown_length_says_how_far_it_got():
    assert progress_module.line("clean", "img", 50, None, 100.0) == "clean: 50 img, 2 s/img, 1m40s so far"
    assert progress_module.duration(3 * 3600 + 5 * 60) == "3h05m"


@pytest.mark.e2e
@pytest.mark.slow  # CI's time; the progress lines' format is tested in the fast tier
def test_a_stage_with_stderr_in_a_file_logs_progress_lines_with_a_rate(tmp_path: Path):
    """finetune in a subprocess, stderr redirected to a file as under nohup or a scheduler: each epoch's
    progress lines with a rate, and the whole run's estimate after its first batches."""
    raw = tiny_params_raw(tmp_path)
    raw["finetune"].update(epochs=2, batch_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    from reprotune.pipeline import params as params_module

    params = params_module.validate(raw)
    make_class_folder(Path(params.paths.raw), per_class=10)
    for name in PIPELINE_STAGES[: PIPELINE_STAGES.index("finetune")]:
        getattr(importlib.import_module(f"stages.{name}"), name)(params)
    log = tmp_path / "finetune.log"
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "stages.finetune"],
            cwd=tmp_path,
            env=child_env(PYTHONPATH=str(ROOT), REPROTUNE_PROGRESS_SECONDS="0"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text  # no bar redrawn in a file
    for epoch in (1, 2):
        assert re.search(
            rf"epoch {epoch}: \d+/\d+ batch \(\d+%\), [\d.]+ (batch/s|s/batch), \d+(m\d\ds|s) left", text
        )
    assert re.search(r"estimate: [\d.]+ s per batch, .* per epoch of \d+ batches; .* for the 2 epoch", text)
