"""tune's search: an Optuna study over finetune's keys, each trial one fine-tuning run
(reprotune/training/finetune_run.py, the run the finetune stage makes) scored on val by
finetune.selection_metric, so that the best trial's values in params.yaml reproduce its score.

- The space is `tune.space` (reprotune/pipeline/params.py: Tune): finetune keys, each a range or choices.
  Choices are given to Optuna as JSON strings (Optuna's categorical values are scalars; an augment scale is
  a list), and turned back into values here, the one place that reads a trial's parameters.
- The study lives in SQLite (`paths.tune_study`), named by what its scores depend on: the data, the head,
  finetune's keys outside the space, the space, the seed and the pruning. Raising `tune.trials` continues
  it; applying its best values (which are in the space) leaves its name unchanged.
- Interruption: a trial that was running when its process died (SIGKILL) or was interrupted (Ctrl-C,
  SIGTERM) is re-queued with the same values, and its run resumes from its checkpoint (keyed by those
  values) where it stopped. Finished trials are never repeated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from reprotune.pipeline.data_kind import DataKind
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Finetune, Params, ParamsError, SearchChoices, Tune, whole_numbers
from reprotune.pipeline.resolve import resolve
from reprotune.training.finetuning import fingerprint

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # a trial's user attribute: its run was cut short, not failed by an error
MLFLOW_RUN = "mlflow_run_id"  # a trial's (and the study's) MLflow run
VAL_LOSS = "val_loss"  # a complete trial's best epoch's val loss (finetune.json's best_val_loss)
RESUMES = "resumes"  # a re-queued trial's user attribute: the number of the cut trial it runs again


def suggest(trial: Any, space: dict) -> dict[str, Any]:
    """The trial's value for every key of the space, drawn by Optuna."""
    values = {}
    for key, dimension in space.items():
        if isinstance(dimension, SearchChoices):
            values[key] = json.loads(
                trial.suggest_categorical(key, [json.dumps(c) for c in dimension.choices])
            )
        elif whole_numbers(key):
            values[key] = trial.suggest_int(key, int(dimension.low), int(dimension.high), log=dimension.log)
        else:
            values[key] = trial.suggest_float(
                key, float(dimension.low), float(dimension.high), log=dimension.log
            )
    return values


def values_of(trial_params: dict[str, Any], space: dict) -> dict[str, Any]:
    """A finished trial's parameters (as Optuna stores them) as params values."""
    return {
        key: json.loads(value) if isinstance(space.get(key), SearchChoices) else value
        for key, value in trial_params.items()
    }


def with_values(params: Params, values: dict[str, Any]) -> Params:
    """params with each dotted finetune key (the space's) set to its value, validated as params.yaml is."""
    tree = params.finetune.model_dump(mode="json")
    for key, value in values.items():
        *sections, leaf = key.removeprefix("finetune.").split(".")
        node = tree
        for section in sections:
            node = node[section]
        node[leaf] = value
    return params.model_copy(update={"finetune": Finetune.model_validate_json(json.dumps(tree))})


def check_space(params: Params, kind: DataKind) -> None:
    """Refuse, naming the key, a value of the space that params.yaml could not hold for these data (an
    image-only key such as finetune.augment.scale on texts): every value a trial may draw must be one the
    resolver would run as written."""
    problems = []
    for key, dimension in params.tune.dimensions().items():
        ends = dimension.choices if isinstance(dimension, SearchChoices) else [dimension.low, dimension.high]
        for value in ends:
            try:
                resolve(with_values(params, {key: value}), kind)
            except ParamsError as error:  # the lines about this key (params.yaml's own were refused earlier)
                about = [line.split(f"{key}: ", 1)[1] for line in error.problems if f" {key}: " in line]
                if about:
                    problems.append(f"params.yaml: tune.space: {key} = {value!r}: {'; '.join(about)}")
                    break
    if problems:
        raise ParamsError(problems)


def study_name(params: Params, layout: Layout) -> str:
    """What a study's scores depend on, hashed: finetune's fingerprint (its keys, the backbone, the head,
    the split) with every key of the space at a fixed value, plus the space, the seed and the pruning."""
    settings = params.tune
    fixed = with_values(
        params,
        {
            key: d.choices[0] if isinstance(d, SearchChoices) else d.low
            for key, d in settings.dimensions().items()
        },
    )
    digest = hashlib.sha256(fingerprint(fixed, layout).encode())
    digest.update(settings.model_dump_json(include={"space", "seed", "pruning"}).encode())
    return f"tune-{digest.hexdigest()[:16]}"


def checkpoint_for(layout: Layout, values: dict[str, Any]) -> Path:
    """Where a trial with these values keeps its resume point (a re-queued trial finds it again)."""
    key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    return layout.tune_checkpoints / key


def finished_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def requeue_interrupted(study: Any, storage: Any) -> list[int]:
    """Trials cut short by a previous run: still RUNNING (its process was killed; marked failed now) or
    failed by an interruption. The values of each are queued again, once (the new trial records which one
    it resumes); returns the cut trials' numbers."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    resumed = {trial.user_attrs.get(RESUMES) for trial in trials}
    requeued = []
    for trial in trials:
        cut = trial.state == TrialState.RUNNING or (
            trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED) is True
        )
        if not cut or trial.number in resumed:
            continue
        if trial.state == TrialState.RUNNING:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={RESUMES: trial.number})
        requeued.append(trial.number)
    return requeued


def summary(study: Any, settings: Tune, metric: str) -> dict:
    """tune.json's content: every trial with its state, val score and values, and the best one."""
    from optuna.trial import TrialState

    trials = [
        {
            "trial": trial.number,
            "state": trial.state.name.lower(),
            "val_score": trial.value if trial.state == TrialState.COMPLETE else None,
            "val_loss": trial.user_attrs.get(VAL_LOSS),
            "last_epoch": max(trial.intermediate_values, default=0),
            "values": values_of(trial.params, settings.dimensions()),
        }
        for trial in study.get_trials(deepcopy=False)
    ]
    finished = [t for t in trials if t["state"] in ("complete", "pruned")]
    complete = [t for t in trials if t["state"] == "complete"]
    # The loop's own rule: the higher score, then the lower loss (on small val sets scores tie often)
    best = max(complete, key=lambda t: (t["val_score"], -t["val_loss"], -t["trial"])) if complete else None
    return {
        "enabled": True,
        "study": study.study_name,
        "metric": metric,
        "budget": settings.trials,
        "finished": len(finished),
        "complete": len(complete),
        "pruned": len(finished) - len(complete),
        "best": best,
        "apply": apply_command(best["values"]) if best else None,
        "trials": trials,
    }


def apply_command(values: dict[str, Any]) -> str:
    """The `dvc exp run` line that trains with these values (each value as YAML reads it back exactly)."""
    parts = []
    for key, value in values.items():
        shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"-S '{key}={shown}'")
    return "dvc exp run " + " ".join(parts)
