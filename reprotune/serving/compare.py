"""The pipeline's MLflow runs side by side: each run's name, when and from which commit it ran, the params that
differ between the runs, and the test metrics of every model the runs hold (baseline, head, fine-tuned,
zero-shot, students, adapted models: whatever evaluate measured).

    reprotune compare [--last 5] [--metrics accuracy macro_f1] [--sort finetune.test.accuracy] [--format csv]
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence

import pandas as pd

from reprotune.pipeline.errors import InputError

# The metrics shown by default: every model's test accuracy and macro-F1 (an adapted model's on the target's
# test images), plus the fine-tuned network's calibration error. --metrics picks others (names or glob patterns over the runs' metric names).
DEFAULT_METRICS = ["*.test.accuracy", "*.target_test.accuracy", "*.test.macro_f1", "finetune.test.ece"]

EXAMPLES = """examples:
  reprotune compare                                   # the last 5 runs, every model's test accuracy and macro-F1
  reprotune compare --last 20 --sort finetune.test.macro_f1
  reprotune compare --metrics 'finetune.test.*' --format csv > runs.csv
  reprotune compare --filter "params.backbone.name = 'efficientnet_lite0'" --format markdown
  reprotune compare --experiment my-experiment --tracking-uri http://127.0.0.1:5000
"""


def metric_names(runs: list, patterns: Sequence[str]) -> list[str]:
    """The runs' metric names matching `patterns` (exact names or globs), in the patterns' order, then
    alphabetically; epoch histories (`*.epoch.*`) only when a pattern names them."""
    found = sorted({name for run in runs for name in run.data.metrics})
    chosen: list[str] = []
    for pattern in patterns:
        for name in found:
            if fnmatch.fnmatchcase(name, pattern) and name not in chosen:
                if ".epoch." in name and ".epoch." not in pattern:
                    continue
                chosen.append(name)
    return chosen


def comparison(runs: list, patterns: Sequence[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """One row per run, in the order given: name, start time, commit, the params that vary, the metrics."""
    params = pd.DataFrame([run.data.params for run in runs])
    varying = [c for c in params.columns if params[c].nunique(dropna=False) > 1]
    table = pd.DataFrame(
        {
            "run": [run.info.run_name or run.info.run_id[:8] for run in runs],
            "started": [
                pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M") for run in runs
            ],
            "commit": [
                run.data.tags.get("git_commit", "")[:8]
                + ("+" if run.data.tags.get("git_dirty") == "true" else "")
                for run in runs
            ],
        }
    )
    table = pd.concat([table, params[varying].reset_index(drop=True)], axis=1)
    for name in metric_names(runs, patterns):
        table[name] = [run.data.metrics.get(name) for run in runs]
    return table


def cell(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def formatted(table: pd.DataFrame, form: str) -> str:
    if form == "csv":
        return table.to_csv(index=False)
    if form == "markdown":
        header = "| " + " | ".join(table.columns) + " |"
        rule = "|" + "---|" * len(table.columns)
        rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
        return "\n".join([header, rule, *rows]) + "\n"
    with pd.option_context("display.width", 250, "display.max_columns", 80, "display.max_colwidth", 40):
        return table.to_string(index=False) + "\n"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from reprotune.pipeline import params as params_module
    from reprotune.reporting.tracking import command_tracking_uri

    parser = argparse.ArgumentParser(
        prog=prog,
        description="The pipeline's MLflow runs side by side: params that differ, and every model's metrics.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--last", type=int, default=5, help="how many runs, newest first (default 5)")
    parser.add_argument(
        "--experiment",
        help="MLflow experiment (default: track.experiment in this project's params.yaml, else reprotune)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=DEFAULT_METRICS,
        help="metric names or glob patterns (default: %(default)s)",
    )
    parser.add_argument("--sort", help="a metric or column to sort by, best (highest) first")
    parser.add_argument("--ascending", action="store_true", help="sort lowest first (for a loss or an error)")
    parser.add_argument(
        "--filter", help="an MLflow search filter, e.g. \"params.finetune.strategy = 'full'\""
    )
    parser.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else the project's mlflow.db")
    options = parser.parse_args(argv)
    try:
        if options.last < 1:
            raise InputError("--last must be at least 1")
        experiment_name = options.experiment
        if experiment_name is None:
            try:
                experiment_name = params_module.load().track.experiment
            except params_module.ParamsError:
                experiment_name = "reprotune"  # outside a project, or its params.yaml does not validate
        uri = command_tracking_uri(options.tracking_uri)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise InputError(
                f"no experiment {experiment_name!r} in {uri}; run `dvc repro` first, or pass --experiment"
            )
        filters = " and ".join(filter(None, ["attributes.status = 'FINISHED'", options.filter]))
        try:
            runs = client.search_runs(
                [experiment.experiment_id],
                filters,
                order_by=["attributes.start_time DESC"],
                max_results=options.last,
            )
        except MlflowException as error:
            raise InputError(f"--filter {options.filter!r}: {str(error).splitlines()[0]}") from None
        if not runs:
            raise InputError(f"no finished run in experiment {experiment_name!r} matches")
        table = comparison(runs, options.metrics)
        if options.sort:
            if options.sort not in table.columns:
                raise InputError(
                    f"--sort {options.sort}: not a column; the columns are {', '.join(table.columns)}"
                )
            table = table.sort_values(
                options.sort, ascending=options.ascending, kind="stable", na_position="last"
            )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(formatted(table, options.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
