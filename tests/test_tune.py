"""tune: the search space as params, a trial's values as params, the study's name, and (e2e) a study that is
killed, continued, logged to MLflow as child runs, and whose best values reproduce its score in finetune."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from reprotune.pipeline import params as params_module
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import ParamsError
from reprotune.training.tuning import apply_command, study_name, suggest, values_of, with_values
from tests.conftest import ROOT, child_env, tiny_params_raw

SPACE = [
    {"key": "finetune.lr", "low": 0.0003, "high": 0.003, "log": True},
    {"key": "finetune.epochs", "low": 2, "high": 3},
    {"key": "finetune.class_weights", "choices": ["none", "balanced"]},
    {"key": "finetune.augment.scale", "choices": [[0.6, 1.0], [0.35, 1.0]]},
]
KEYS = {dimension["key"] for dimension in SPACE}


def tune_params(base: Path, **tune) -> params_module.Params:
    raw = tiny_params_raw(base)
    raw["tune"] |= {"space": SPACE} | tune
    return params_module.validate(raw)


def test_the_space_takes_finetune_keys_with_values_they_accept(tmp_path: Path):
    raw = tiny_params_raw(tmp_path)
    for space, message in [
        ([{"key": "backbone.input_size", "choices": [160]}], "String should match pattern"),
        ([{"key": "finetune.speed", "choices": [1]}], "finetune.speed: not a finetune key"),
        (
            [{"key": "finetune.strategy", "choices": ["fast"]}],
            "finetune.strategy: 'fast' is not a value it takes",
        ),
        ([{"key": "finetune.lr", "low": 0.1, "high": 0.01}], "low must be below high"),
        ([{"key": "finetune.lr", "low": 0.0, "high": 0.01, "log": True}], "a log scale needs low > 0"),
        ([{"key": "finetune.patience", "low": 0, "high": 5}], "finetune.patience: 0 is not a value it takes"),
        ([{"key": "finetune.lr", "low": 0.1, "high": 0.2}] * 2, "each key once"),
    ]:
        raw["tune"]["space"] = space
        with pytest.raises(ParamsError, match="tune.space") as error:
            params_module.validate(raw)
        assert message in str(error.value)


def test_a_space_value_the_data_cannot_take_is_refused_by_name(tmp_path: Path):
    from reprotune.pipeline.data_kind import IMAGE, TEXT, DataKind
    from reprotune.training.tuning import check_space

    check_space(tune_params(tmp_path), DataKind(IMAGE, sample=False))
    raw = tiny_params_raw(tmp_path, images=False)  # as params.yaml ships: the image keys say auto
    raw["backbone"]["input_size"] = "auto"
    raw["tune"]["space"] = SPACE
    with pytest.raises(ParamsError) as error:
        check_space(params_module.validate(raw), DataKind(TEXT, sample=False))
    assert error.value.problems == [
        "params.yaml: tune.space: finetune.augment.scale = [0.6, 1.0]: applies to images only and the data are "
        "texts (ingest.modality); set it to auto (got [0.6, 1.0])"
    ]


def test_a_trials_values_become_params_and_the_command_that_applies_them(tmp_path: Path):
    params = tune_params(tmp_path)
    trial = optuna.trial.FixedTrial(
        {
            "finetune.lr": 0.0012,
            "finetune.epochs": 3,
            "finetune.class_weights": '"balanced"',
            "finetune.augment.scale": "[0.35, 1.0]",
        }
    )
    values = suggest(trial, params.tune.dimensions())
    assert values == {
        "finetune.lr": 0.0012,
        "finetune.epochs": 3,
        "finetune.class_weights": "balanced",
        "finetune.augment.scale": [0.35, 1.0],
    }
    assert values_of(trial.params, params.tune.dimensions()) == values
    changed = with_values(params, values)
    assert changed.finetune.lr == 0.0012 and changed.finetune.augment.scale == (0.35, 1.0)
    assert changed.finetune.class_weights == "balanced" and changed.backbone == params.backbone
    assert apply_command(values) == (
        "dvc exp run -S 'finetune.lr=0.0012' -S 'finetune.epochs=3' -S 'finetune.class_weights=balanced' "
        "-S 'finetune.augment.scale=[0.35,1.0]'"
    )
    # what dvc does with -S: each value read back as YAML gives the trial's value
    for part in apply_command(values).split("-S ")[1:]:
        key, shown = part.strip().strip("'").split("=", 1)
        assert yaml.safe_load(shown) == values[key]


def test_applying_the_best_values_keeps_the_study_and_a_new_space_starts_another(tmp_path: Path):
    from tests.test_finetune import prepare

    params = tune_params(tmp_path)
    prepare(params)
    layout = Layout(params.paths)
    name = study_name(params, layout)
    applied = with_values(params, {"finetune.lr": 0.002, "finetune.class_weights": "balanced"})
    assert study_name(applied, layout) == name  # applying tune's result does not restart the search
    assert study_name(with_values(params, {"finetune.patience": 2}), layout) != name  # outside the space
    narrower = params.model_copy(
        update={"tune": params.tune.model_copy(update={"space": params.tune.space[:2]})}
    )
    assert study_name(narrower, layout) != name
    more = params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 40})})
    assert study_name(more, layout) == name  # a bigger budget continues the study


def test_off_it_writes_a_record_and_trains_nothing(tiny_params):
    from stages.tune import tune

    tune(tiny_params)
    layout = Layout(tiny_params.paths)
    assert json.loads(layout.tune_summary.read_text()) == {"enabled": False}
    assert "Off" in layout.tune_report.read_text()
    assert not layout.tune_study.exists()


def study_state(database: Path) -> list[tuple[int, str, int]]:
    """(number, state, epochs reported) of every trial, read straight from Optuna's tables while a study
    runs."""
    if not database.exists():
        return []
    with sqlite3.connect(database, timeout=30) as connection:
        try:
            return connection.execute(
                "SELECT t.number, t.state, COUNT(v.trial_intermediate_value_id) FROM trials t "
                "LEFT JOIN trial_intermediate_values v ON v.trial_id = t.trial_id GROUP BY t.trial_id"
            ).fetchall()
        except sqlite3.OperationalError:  # the tables are being created
            return []


@pytest.mark.e2e
@pytest.mark.slow  # stress tier (38 s): CI keeps within 15 minutes; the fast tier checks the study's parts
def test_a_killed_study_continues_logs_every_trial_and_its_best_values_reproduce_its_score(tmp_path: Path):
    """tune in a subprocess, SIGKILLed while its second trial runs; run again, it finishes the budget without
    repeating a finished trial (the cut one runs again with its values). MLflow holds one parent run with a
    child per trial (values as params, val score as metric). Then the best values, written into
    params.yaml as `dvc exp run -S` would, make finetune reach the score the study reported."""
    from mlflow.tracking import MlflowClient

    from tests.test_finetune import prepare

    params = tune_params(tmp_path, enabled=True, trials=2, pruning=False)
    prepare(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = child_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=tracking)
    database = Layout(params.paths).tune_study

    def start(stage: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", f"stages.{stage}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    process = start("tune")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            states = study_state(database)
            finished = any(state in ("COMPLETE", "PRUNED") for _, state, _ in states)
            if finished and any(state == "RUNNING" and epochs for _, state, epochs in states):
                break  # killed after an epoch of its second trial: that trial has a checkpoint to resume
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()[0][-3000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    storage = optuna.storages.RDBStorage(f"sqlite:///{database}")
    (name,) = optuna.study.get_all_study_names(storage)
    before = {t.number: t for t in optuna.load_study(study_name=name, storage=storage).trials}
    finished = {n: t for n, t in before.items() if t.state.is_finished()}
    (cut,) = [t for t in before.values() if t.state == optuna.trial.TrialState.RUNNING]

    again = start("tune")
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert "resuming from" in output  # the cut trial went on from its last epoch's checkpoint
    after = {t.number: t for t in optuna.load_study(study_name=name, storage=storage).trials}
    for number, trial in finished.items():  # finished trials are kept, not run again
        assert after[number].state == trial.state and after[number].params == trial.params
        assert after[number].value == trial.value
    assert after[cut.number].state == optuna.trial.TrialState.FAIL
    resumed = [t for t in after.values() if t.user_attrs.get("resumes") == cut.number]
    assert len(resumed) == 1 and resumed[0].params == cut.params and resumed[0].state.is_finished()
    done = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 2

    summary = json.loads(Layout(params.paths).tune_summary.read_text())
    assert summary["finished"] == 2 and summary["best"]["val_score"] == max(
        t.value for t in after.values() if t.state.name == "COMPLETE"
    )
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(f"{params.track.experiment}-tune")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_id == summary["mlflow_parent_run"] and parent.info.status == "FINISHED"
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) == len(after)  # one per trial, the cut one included
    for trial in after.values():
        child = children[trial.user_attrs["mlflow_run_id"]]
        assert child.data.params["trial"] == str(trial.number)
        assert KEYS <= set(child.data.params)
        if trial.state.name == "COMPLETE":
            assert child.info.status == "FINISHED"
            assert child.data.metrics["best_val_macro_f1"] == pytest.approx(trial.value)
    assert children[cut.user_attrs["mlflow_run_id"]].info.status == "KILLED"

    # Apply the best values as `dvc exp run -S` would (params.yaml edited), and train finetune.
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for key, value in summary["best"]["values"].items():
        node = raw
        *sections, leaf = key.split(".")
        for section in sections:
            node = node[section]
        node[leaf] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    finetune = start("finetune")
    output = finetune.communicate(timeout=600)[0]
    assert finetune.returncode == 0, output[-3000:]
    trained = json.loads((Path(params.paths.finetuned) / "finetune.json").read_text())
    assert trained["selection_metric"] == "macro_f1"
    assert trained["best_val_score"] == summary["best"]["val_score"]
    assert trained["best_val_loss"] == summary["best"]["val_loss"]  # the same run, to the last bit
    assert f"Best: trial {summary['best']['trial']}" in Layout(params.paths).tune_report.read_text()
