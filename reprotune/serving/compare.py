"""Print the last N MLflow runs side by side: the params that differ between them, and the headline metrics.

.venv/bin/python -m reprotune.compare [--last 5] [--experiment reprotune]
"""

from __future__ import annotations

import argparse

import pandas as pd

from reprotune.reporting.tracking import tracking_uri

METRICS = [
    "baseline.test.accuracy",
    "head.test.accuracy",
    "finetune.test.accuracy",
    "finetune.test.macro_f1",
    "finetune.test.ece",
]


def comparison(runs: list, metrics: list[str] = METRICS) -> pd.DataFrame:
    """One row per run (oldest first): start time, commit, the params that vary, then the metrics."""
    params = pd.DataFrame([run.data.params for run in runs])
    varying = [c for c in params.columns if params[c].nunique(dropna=False) > 1]
    table = pd.DataFrame(
        {
            "run": [run.info.run_id[:8] for run in runs],
            "started": [
                pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M") for run in runs
            ],
            "commit": [run.data.tags.get("git_commit", "")[:8] for run in runs],
        }
    )
    table = pd.concat([table, params[varying]], axis=1)
    for name in metrics:
        table[name] = [run.data.metrics.get(name) for run in runs]
    return table.iloc[::-1].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare the last MLflow runs of the pipeline.")
    parser.add_argument("--last", type=int, default=5, help="how many runs (default 5)")
    parser.add_argument("--experiment", default="reprotune", help="MLflow experiment (default reprotune)")
    options = parser.parse_args()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(options.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {options.experiment!r} in {tracking_uri()}; run `dvc repro` first")
    runs = client.search_runs(
        [experiment.experiment_id],
        "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=options.last,
    )
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(comparison(runs).to_string(index=False))


if __name__ == "__main__":
    main()
