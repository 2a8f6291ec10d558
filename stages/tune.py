"""tune: search finetune's recipe on val with Optuna, when `tune.enabled` (off: a one-line record, nothing
trained).

Each trial draws the keys of `tune.space` (TPE, seeded), trains finetune's run with them
(reprotune/training/finetune_run.py: the same code, data, head and seed as the finetune stage) and is scored
on val by `finetune.selection_metric`; with `tune.pruning`, a trial whose val score after an epoch falls
below the median of the earlier trials' at that epoch is stopped. Test data are never read.

Every trial is an MLflow child run (its values as params, its val score per epoch) under one parent run
for the study, in the experiment `<track.experiment>-tune`. The study is kept in `paths.tune_study`
(SQLite): re-running continues it, re-queueing a trial that was cut short (it resumes from its checkpoint)
and never repeating a finished one (reprotune/training/tuning.py).

Outputs: reports/tune.json (every trial, the best one, the command that applies it) and reports/tune.md.
The best values reach the pipeline only through params.yaml: `dvc exp run -S key=value ...` as tune.md
prints it, or the keys set by hand; then finetune trains exactly the best trial's run.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable

from reprotune.pipeline import data_kind, stage
from reprotune.pipeline.atomic_io import write_json, write_text
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.markdown import lines_of
from reprotune.reporting.tracking import open_experiment
from reprotune.training.finetune_run import run_finetune
from reprotune.training.loop import Evaluation
from reprotune.training.tuning import (
    INTERRUPTED,
    MLFLOW_RUN,
    VAL_LOSS,
    check_space,
    checkpoint_for,
    finished_states,
    requeue_interrupted,
    study_name,
    suggest,
    summary,
    with_values,
)

log = logging.getLogger(__name__)


def tune(params: Params) -> None:
    layout = Layout(params.paths)
    settings = params.tune
    if not settings.enabled:
        write_json(layout.tune_summary, {"enabled": False})
        write_text(
            layout.tune_report, lines_of(["# Tune", "", "Off (`tune.enabled: false`): nothing searched."])
        )
        return
    import mlflow
    import optuna

    check_space(params, data_kind.read(layout.data_kind))
    layout.tune_study.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{layout.tune_study.as_posix()}")
    name = study_name(params, layout)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    requeued = requeue_interrupted(study, storage)
    # A new seed for each continuation, derived from how far the study got: a restarted sampler with the
    # first seed would draw the first trials' values again.
    study.sampler = optuna.samplers.TPESampler(
        seed=settings.seed + len(study.trials), n_startup_trials=max(2, min(10, settings.trials // 3))
    )
    study.pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, settings.trials // 4)), n_warmup_steps=1)
        if settings.pruning
        else optuna.pruners.NopPruner()
    )
    metric = params.finetune.selection_metric
    experiment_id = open_experiment(f"{params.track.experiment}-tune")
    mlflow.set_experiment(experiment_id=experiment_id)
    for trial in study.get_trials(deepcopy=False):  # the MLflow runs of cut trials end as the trials did
        if trial.number in requeued and MLFLOW_RUN in trial.user_attrs:
            mlflow.tracking.MlflowClient().set_terminated(trial.user_attrs[MLFLOW_RUN], status="KILLED")
    tags = {"host": socket.gethostname(), "pid": str(os.getpid()), "study": name}
    parent_id = study.user_attrs.get(MLFLOW_RUN)
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else name, tags=tags) as parent:
        if parent_id is None:
            study.set_user_attr(MLFLOW_RUN, parent.info.run_id)
            mlflow.log_params(
                {"study": name, "metric": metric, "seed": settings.seed, "pruning": settings.pruning}
                | {f"space.{d.key}": d.model_dump_json(exclude={"key"}) for d in settings.space}
            )
        remaining = settings.trials - sum(t.state in finished_states() for t in study.trials)
        if remaining > 0:
            log.info(
                "study %s: %d trial(s) to run of %d (%s)", name, remaining, settings.trials, layout.tune_study
            )
            study.optimize(
                objective(params, layout, metric, tags),
                n_trials=remaining,
                timeout=settings.minutes * 60 if settings.minutes else None,
                callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=finished_states())],
            )
        result = summary(study, settings, metric)
        if result["best"]:
            mlflow.log_metric(f"best_val_{metric}", result["best"]["val_score"])
            mlflow.set_tags({f"best.{k}": str(v) for k, v in result["best"]["values"].items()})
            mlflow.set_tag("best.trial", str(result["best"]["trial"]))
        result["mlflow_parent_run"] = parent.info.run_id
    if result["finished"] >= settings.trials:  # the study is done: its resume points are spent
        shutil.rmtree(layout.tune_checkpoints, ignore_errors=True)
    write_json(layout.tune_summary, result)
    write_text(layout.tune_report, lines_of(report(result, params, layout)))


def objective(params: Params, layout: Layout, metric: str, tags: dict) -> Callable:
    import mlflow
    import optuna

    def run_trial(trial: optuna.Trial) -> float:
        values = suggest(trial, params.tune.dimensions())
        checkpoint = checkpoint_for(layout, values)
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True, tags=tags) as child:
            trial.set_user_attr(MLFLOW_RUN, child.info.run_id)
            mlflow.log_params({"trial": trial.number} | values)

            def report_epoch(epoch: int, validation: Evaluation) -> None:
                mlflow.log_metrics(
                    {f"val_{metric}": validation.score, "val_accuracy": validation.accuracy}, step=epoch
                )
                trial.report(validation.score, epoch)
                if trial.should_prune():
                    mlflow.set_tag("state", "pruned")
                    raise optuna.TrialPruned(f"val {metric} {validation.score:.4f} after epoch {epoch}")

            started = time.perf_counter()
            try:
                run = run_finetune(
                    with_values(params, values), layout, 0, 1, checkpoint, on_epoch=report_epoch
                )
            except optuna.TrialPruned as pruned:  # raised below, so that its MLflow run ends FINISHED
                stopped = pruned
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: resumed on the next run
                trial.set_user_attr(INTERRUPTED, True)
                raise
            else:
                stopped = None
                trial.set_user_attr(VAL_LOSS, run.progress.best_loss)  # tells equal scores apart
                mlflow.log_metrics(
                    {
                        f"best_val_{metric}": run.progress.best_score,
                        "best_val_loss": run.progress.best_loss,
                        "best_epoch": run.progress.best_epoch,
                    }
                )
                mlflow.set_tag("state", "complete")
            mlflow.log_metric("seconds", time.perf_counter() - started)
            shutil.rmtree(checkpoint, ignore_errors=True)
        if stopped is not None:
            raise stopped
        return run.progress.best_score

    return run_trial


def report(result: dict, params: Params, layout: Layout) -> list[str]:
    """tune.md: the study, its best trial and how to apply it, and every trial."""
    keys = list(params.tune.dimensions())
    best = result["best"]
    lines = [
        "# Tune",
        "",
        f"Study `{result['study']}` in `{params.paths.tune_study}` (Optuna TPE, seed {params.tune.seed}"
        + (", median pruning" if params.tune.pruning else "")
        + f"); MLflow experiment `{params.track.experiment}-tune`, parent run `{result['mlflow_parent_run']}`.",
        f"{result['finished']} of {result['budget']} trials finished ({result['complete']} complete, "
        f"{result['pruned']} pruned), each scored on val by `{result['metric']}`; test data are not read.",
        "",
    ]
    if best is None:
        return lines + [
            "No trial has completed yet: raise `tune.trials` or `tune.minutes` and run tune again.",
            "",
        ]
    lines += [
        f"Best: trial {best['trial']}, val {result['metric']} {best['val_score']:.4f}. To train it:",
        "",
        f"    {result['apply']}",
        "",
        "(or set these keys in params.yaml and run `dvc repro`: finetune then trains exactly this trial's run).",
        "",
        "| trial | state | val score | last epoch | " + " | ".join(f"`{k}`" for k in keys) + " |",
        "|---|---|---|---|" + "---|" * len(keys),
    ]
    for trial in result["trials"]:
        score = "–" if trial["val_score"] is None else f"{trial['val_score']:.4f}"
        cells = [str(trial["values"].get(k, "–")) for k in keys]
        lines.append(
            f"| {trial['trial']} | {trial['state']} | {score} | {trial['last_epoch']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines + [""]


def main() -> None:
    stage.run(tune)


if __name__ == "__main__":
    main()
