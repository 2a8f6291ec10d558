"""Benchmark reruns on a 10,000-image dataset: the full pipeline stage by stage, a no-op `dvc repro`, adding
one image, and a train_head-only change.

    .venv/bin/python -m benchmarks.bench_rerun [--images 10000] [--epochs 1] [--input-size 64]

Runs in a temporary copy of the project (tracked files only, its own git repository) with params.yaml as it
is, except `finetune.epochs` (default 1) and `backbone.input_size` (default 64, for 48 px images): the figures
are about what re-runs and what it costs around the model, and this keeps the whole run in minutes. Merged into reports/bench.json under
"rerun".
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks.results import print_table, save

STAGES = list(yaml.safe_load(Path("dvc.yaml").read_text())["stages"])  # every stage, in order


def make_dataset(raw: Path, images: int, classes: int = 10, side: int = 48) -> None:
    """Small distinct PNGs: a colour per class plus noise (no two near-duplicates)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, (classes, 3))
    for n in range(images):
        label = n % classes
        pixels = np.clip(colours[label] + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
        folder = raw / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{n:05d}.png")


def dvc(project: Path, *args: str) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.perf_counter()
    done = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def git(project: Path, *args: str) -> None:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "b@b",
    }
    subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True)


def logging_seconds(project: Path, store: Path) -> float:
    """What track's MLflow calls cost on a fresh SQLite store, with this run's real params, metrics and epoch
    history (the batched calls track makes; artifacts and the model export are file copies, not counted)."""
    import mlflow

    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.layout import Layout
    from stages.track import epoch_history, param_values, run_metrics

    previous = Path.cwd()
    os.chdir(project)
    try:
        params = params_module.load()
        layout = Layout(params.paths)
        mlflow.set_tracking_uri(f"sqlite:///{store}")
        mlflow.set_experiment("bench")  # creates the store: not part of a run's cost
        started = time.perf_counter()
        with mlflow.start_run() as run:
            mlflow.log_params(param_values(params)[0])
            mlflow.log_metrics(run_metrics(layout))
            mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=epoch_history(layout))
        return time.perf_counter() - started
    finally:
        os.chdir(previous)


def main() -> None:
    from tests.conftest import copy_project

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--input-size", type=int, default=64, help="backbone.input_size (the images are 48 px)"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        project = copy_project(Path(scratch) / "project")
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["finetune"]["epochs"] = options.epochs
        params["backbone"]["input_size"] = options.input_size
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        make_dataset(project / "data" / "raw", options.images)
        git(project, "init", "-q")
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "bench")

        stage_seconds = {stage: round(dvc(project, "repro", "-s", stage)[0], 1) for stage in STAGES}
        full = sum(stage_seconds.values())
        no_op = [dvc(project, "repro")[0] for _ in range(3)]
        _, output = dvc(project, "repro")
        assert "Running stage" not in output, output

        Image.fromarray(np.full((48, 48, 3), 77, np.uint8)).save(
            project / "data" / "raw" / "class_0" / "added.png"
        )
        added_upstream = dvc(project, "repro", "split")[0]
        added_featurize = dvc(project, "repro", "-s", "featurize")[0]
        added_rest = dvc(project, "repro")[0]

        params["train_head"]["C"] = params["train_head"]["C"] / 2
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        head_change, output = dvc(project, "repro")
        rerun = re.findall(r"Running stage '(\w+)'", output)
        logging = logging_seconds(project, Path(scratch) / "logging.db")
    result = save(
        "rerun",
        {
            "images": options.images,
            "finetune_epochs": options.epochs,
            "input_size": options.input_size,
            "full_pipeline_seconds": round(full, 1),
            "stage_seconds": stage_seconds,
            "track_share_of_full": round(stage_seconds["track"] / full, 4),
            "mlflow_logging_seconds": round(logging, 3),
            "mlflow_logging_share_of_finetune": round(logging / stage_seconds["finetune"], 5),
            "no_op_repro_seconds": round(statistics.median(no_op), 2),
            "one_image_added": {
                "ingest_to_split_seconds": round(added_upstream, 1),
                "featurize_seconds": round(added_featurize, 1),
                "featurize_ratio_to_full_featurize": round(added_featurize / stage_seconds["featurize"], 3),
                "rest_seconds": round(added_rest, 1),
            },
            "train_head_change": {
                "stages": rerun,
                "seconds": round(head_change, 1),
                "ratio_to_full": round(head_change / full, 3),
                "without_finetune_ratio_to_full": round((head_change - stage_seconds["finetune"]) / full, 3),
            },
        },
    )
    print_table(
        f"reruns on {options.images} images ({options.epochs} fine-tuning epoch)",
        [
            *[(f"stage {stage}", f"{seconds} s", "") for stage, seconds in stage_seconds.items()],
            ("full pipeline", f"{result['full_pipeline_seconds']} s", ""),
            (
                "MLflow logging",
                f"{logging:.2f} s",
                f"{result['mlflow_logging_share_of_finetune']:.2%} of the finetune stage (target < 2%)",
            ),
            ("no-op dvc repro", f"{result['no_op_repro_seconds']} s", "target < 1.5 s"),
            ("+1 image: ingest..split", f"{added_upstream:.1f} s", "clean decodes every file again"),
            (
                "+1 image: featurize",
                f"{added_featurize:.1f} s",
                f"{result['one_image_added']['featurize_ratio_to_full_featurize']} of the full featurize",
            ),
            (
                "train_head change",
                f"{head_change:.1f} s",
                f"{result['train_head_change']['ratio_to_full']} of full; reruns {', '.join(rerun)}",
            ),
        ],
    )


if __name__ == "__main__":
    main()
