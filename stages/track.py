"""track: record this pipeline result as one MLflow run.

DVC runs this stage only when something upstream changed, so an unchanged `dvc repro` adds no run. The run
holds every params.yaml value (flattened keys), the metrics, the reports and plots, the models (safetensors)
and tags for the git commit and the data's content hash.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

import pandas as pd

from reprotune.pipeline import data_kind, stage
from reprotune.pipeline.atomic_io import process_alive, read_json, write_json
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.hashing import sha256_of_file
from reprotune.pipeline.layout import SPLITS, Layout
from reprotune.pipeline.params import Params, flatten
from reprotune.pipeline.resolve import decisions
from reprotune.reporting.tracking import (
    changed_params,
    declared_artifacts,
    experiment_lineage,
    git_lineage,
    open_experiment,
    point_alias,
    run_description,
    run_name,
    stage_output_hashes,
    tracking_uri,
)

log = logging.getLogger(__name__)

MLFLOW_PARAM_LIMIT = 6000  # characters MLflow accepts in one param value


def param_values(params: Params) -> tuple[dict[str, str], dict[str, str]]:
    """(params as run, short enough for MLflow, the rest), all as strings: every `auto` as the value it
    became, and a key that does not apply to these data as `not used`."""
    decided = decisions(params)
    flat = {
        key: "not used"
        if key in decided and not decided[key].used
        else json.dumps(value)
        if isinstance(value, list | dict)
        else str(value)
        for key, value in flatten(params.model_dump(mode="json")).items()
    }
    short = {k: v for k, v in flat.items() if len(v) <= MLFLOW_PARAM_LIMIT}
    return short, {k: v for k, v in flat.items() if k not in short}


def student_model_name(params: Params) -> str:
    """The registered model the distilled student is logged under, beside the fine-tuned network's."""
    return f"{params.track.model_name}-student"


def distill_metrics(layout: Layout) -> dict[str, float]:
    """The students' training summary (parameters, size, best epoch) and the measured latency."""
    record = read_json(layout.distill_meta)
    if not record["enabled"]:
        return {}
    numbers = {f"distill.teacher.{k}": float(v) for k, v in record["teacher"].items() if k != "backbone"}
    for student, summary in record["students"].items():
        numbers |= {f"distill.{student}.{k}": float(v) for k, v in summary.items()}
    return numbers | {f"latency.{k}": float(v) for k, v in read_json(layout.latency).items()}


def run_metrics(layout: Layout) -> dict[str, float]:
    numbers = {k: float(v) for k, v in flatten(read_json(layout.metrics)).items()}
    head = read_json(layout.head_meta)
    numbers |= {"head.C": head["C"], "head.iterations": head["iterations"]}
    if head["val_accuracy"] is not None:
        numbers["head.val.accuracy"] = head["val_accuracy"]
    cleaning, splits = read_json(layout.cleaning_report), read_json(layout.split_report)
    numbers |= {
        "data.scanned": cleaning["scanned"],
        "data.kept": cleaning["kept"],
        "data.dropped": cleaning["dropped"],
    }
    numbers |= {
        "split.leakage_pairs": splits["leakage"]["near_duplicate_pairs_across_splits"],
        "split.similar_pairs": splits["leakage"]["similar_pairs_across_splits"],
        "leakage.embedding_pairs": read_json(layout.leakage_report)["pairs_across_splits"],
    }
    numbers |= {f"export.{k}": float(v) for k, v in flatten(read_json(layout.export_report)).items()}
    finetuned = read_json(layout.finetuned_meta)
    numbers |= {
        f"finetune.{k}": float(finetuned[k]) for k in ("best_val_accuracy", "best_val_score", "best_epoch")
    }
    numbers["baseline.val.accuracy_search"] = read_json(layout.baseline_meta)["val_accuracy"]
    issues = pd.read_csv(layout.label_issues, dtype=str, keep_default_na=False)
    numbers["label_issues.flagged"] = len(issues)
    numbers |= {f"label_issues.flagged.{split}": int((issues["split"] == split).sum()) for split in SPLITS}
    reading = read_json(layout.learning_curve)["reading"]
    numbers |= {f"learning_curve.{k}": float(v) for k, v in reading.items() if isinstance(v, int | float)}
    adapted = read_json(layout.adapt_report)
    if adapted["method"] != "none":
        numbers |= {
            f"adapt.{model}.{variant}.{key}": float(value)
            for model, variants in adapted["models"].items()
            for variant, record in variants.items()
            for key, value in flatten(
                {k: v for k, v in record.items() if k in ("source_test", "target_test", "domain_accuracy")}
            ).items()
            if isinstance(value, int | float)
        }
    return numbers | distill_metrics(layout)


def per_class_tables(layout: Layout) -> dict[str, pd.DataFrame]:
    """Per-class test metrics as MLflow tables (viewable and comparable in the UI), not hundreds of metrics."""
    return {
        model: pd.DataFrame([{"class": name, **row} for name, row in report["classes"].items()])
        for model, report in read_json(layout.per_class).items()
    }


def epoch_history(layout: Layout) -> list:
    """finetune's and distill's epoch curves (step = epoch) and the learning curve (step = labels per class) as
    MLflow metric histories, for one batched call."""
    from mlflow.entities import Metric

    with layout.finetune_history.open(newline="") as stream:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(stream)]
    epochs = [
        Metric(f"finetune.epoch.{name}", value, 0, int(row["epoch"]))
        for row in rows
        for name, value in row.items()
        if name != "epoch"
    ]
    with layout.distill_history.open(newline="") as stream:
        epochs += [
            Metric(f"distill.{row['student']}.epoch.{name}", float(value), 0, int(row["epoch"]))
            for row in csv.DictReader(stream)
            for name, value in row.items()
            if name not in ("student", "epoch")
        ]
    curve = read_json(layout.learning_curve)["points"]
    return epochs + [
        Metric(
            f"learning_curve.{split}_accuracy",
            point[split]["mean"],
            0,
            int(round(point["mean_labels_per_class"]))
            if point["labels_per_class"] == "all"
            else point["labels_per_class"],
        )
        for point in curve
        for split in ("val", "test")
    ]


def log_model(params: Params, layout: Layout, folder: Path, name: str, registered: str) -> str:
    """Log the model MLflow serves (reprotune/serving/pyfunc.py: images or texts in, label, confidence and
    probabilities out, running the exported folder `folder`) as "models from code", so that loading it
    unpickles nothing; with a signature and two real test rows as input example, registered as `registered`,
    with the alias pointed at it."""
    import mlflow
    from mlflow.models import infer_signature

    import reprotune
    from reprotune.modalities import exporting
    from reprotune.serving import pyfunc as serving

    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    test = manifest[manifest["split"] == "test"]
    example = exporting.of(layout.modality).served_example(layout, pd.concat([test, test]).head(2))
    card = read_json(folder / layout.model_card.name)
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = serving.artifacts_of(folder, Path(scratch))
        model = serving.Classifier()
        model.load_context(type("Context", (), {"artifacts": artifacts})())
        output = model.predict(None, example)
        if output["error"].any():
            raise AssertionError(
                f"the served model refused its own input example: {output['error'].tolist()}"
            )
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=serving.__file__,
            artifacts=artifacts,
            code_paths=[str(Path(reprotune.__file__).parent)],
            pip_requirements=serving.requirements(),
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=registered,
            metadata={
                "modality": card["modality"],
                "classes": card["classes"],
                "preprocessing": card["preprocessing"],
                "temperature": card["temperature"],
            },
        )
    version = str(info.registered_model_version)
    point_alias(registered, params.track.alias, version)
    log.info("registered %s version %s as @%s", registered, version, params.track.alias)
    return version


def previous_params(experiment_id: str) -> dict[str, str] | None:
    """The params of the experiment's latest finished run (what this run's name and description are told
    against), or None for its first."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id],
        "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].data.params if runs else None


def close_abandoned_runs(experiment_id: str) -> None:
    """Mark FAILED the RUNNING runs this host started from a process that no longer exists (killed with
    SIGKILL, or a machine that went down): no run may stay RUNNING for ever. Runs of live processes, such as
    parallel `dvc queue` workers, are left alone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    host = socket.gethostname()
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("host") == host and tags.get("pid", "").isdigit() and not process_alive(int(tags["pid"])):
            client.set_terminated(run.info.run_id, status="FAILED")
            log.warning("marked abandoned run %s (pid %s) FAILED", run.info.run_id, tags["pid"])


def track(params: Params) -> None:
    """Record the result; a tracking server that cannot be reached is one clear line, not a traceback, and
    leaves every output as it was (the record file is written only after the run has finished)."""
    import requests
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    try:
        record(params)
    except (MlflowException, requests.exceptions.RequestException) as error:
        remote = uri.startswith(("http://", "https://"))
        if remote and (
            "API request to" in str(error) or isinstance(error, requests.exceptions.ConnectionError)
        ):
            raise InputError(
                f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) did not answer: "
                f"{str(error).splitlines()[0][:300]}. Start it (or point MLFLOW_TRACKING_URI at one that runs) "
                "and run `dvc repro` again: no output was changed, and the result is logged then"
            ) from None
        raise


def record(params: Params) -> None:
    import mlflow

    layout = Layout(params.paths)
    data_hash = sha256_of_file(layout.clean_manifest)
    outputs = stage_output_hashes()
    experiment_id = open_experiment(params.track.experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    close_abandoned_runs(experiment_id)
    short, long = param_values(params)
    metrics = run_metrics(layout)
    previous = previous_params(experiment_id)
    lineage = git_lineage() | {"data_sha256": data_hash}
    changed = changed_params(short, previous)
    headline = {k: v for k, v in metrics.items() if k.endswith(".test.accuracy") and k.count(".") == 2}
    with mlflow.start_run(
        run_name=run_name(short, previous, experiment_lineage().get("dvc_exp_name")),
        description=run_description(headline, changed, previous, lineage),
        tags={"host": socket.gethostname(), "pid": str(os.getpid())},
    ) as run:
        mlflow.log_params(short)
        kind = data_kind.read(layout.data_kind)
        kept = layout.read_manifest(layout.clean_manifest)[["path", "label", "sha256"]]
        mlflow.log_input(
            mlflow.data.from_pandas(
                kept,
                source=params.paths.raw,
                targets="label",
                name=f"cleaned {kind.items}",
                digest=outputs.get(f"dvc.clean.{params.paths.cleaned}", data_hash)[:36],
            ),
            context="training",
        )
        mlflow.log_metrics(metrics)
        mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=epoch_history(layout))
        mlflow.set_tags(
            lineage
            | experiment_lineage()
            | {
                "backbone": params.backbone.name,
                "modality": kind.modality,
                # which params were `auto` in params.yaml (their values above are what auto became)
                "params_auto": ",".join(
                    k for k, c in decisions(params).items() if c.used and c.written == "auto"
                ),
                "backbone_weights": read_json(layout.features_meta)["weights"],
            }
        )
        with tempfile.TemporaryDirectory() as folder:
            extras = Path(folder)
            (extras / "classes.json").write_text(json.dumps(read_json(layout.head_meta)["classes"]))
            # every earlier stage's output hash from dvc.lock: lineage, kept out of the tags, where ~45 of
            # them would come before any metric on the run's page
            (extras / "dvc_outputs.json").write_text(json.dumps(outputs, indent=2))
            if long:
                (extras / "params_too_long.json").write_text(json.dumps(long, indent=2))
            mlflow.log_artifacts(folder, "lineage")
        for artifact in declared_artifacts(params.paths):  # every report and model the stages declare
            if artifact.path.is_dir():
                mlflow.log_artifacts(str(artifact.path), artifact.folder)
            else:
                mlflow.log_artifact(str(artifact.path), artifact.folder)
        for model, table in per_class_tables(layout).items():
            mlflow.log_table(table, f"reports/per_class_{model}.json")
        version = log_model(params, layout, layout.exported, "model", params.track.model_name)
        if read_json(layout.distill_meta)["enabled"]:
            log_model(params, layout, layout.student_export, "student", student_model_name(params))
    write_json(
        layout.mlflow_run,
        {"run_id": run.info.run_id, "experiment": params.track.experiment, "model_version": version},
    )
    log.info("MLflow run %s in %s", run.info.run_id, tracking_uri())


def main() -> None:
    stage.run(track)


if __name__ == "__main__":
    main()
