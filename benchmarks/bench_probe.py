"""Benchmark the linear probe (train_head's solver) on 50,000 x 1,280 float32 embeddings.

    .venv/bin/python -m benchmarks.bench_probe [--rows 50000] [--classes 100]

The embeddings are synthetic but shaped like a backbone's: non-negative pooled activations (ReLU6 outputs
averaged, as EfficientNet-Lite0's are) around one centre per class, with the class signal spread thinly over
all 1,280 features. Reports seconds, iterations and whether the solver converged within
params.yaml's train_head.max_iter, for each value of train_head.C and for C = 100, and train_head's time
(one fit per listed value). Merged into reports/bench.json under "probe".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.results import print_table, save


def embeddings(rows: int, features: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.gamma(0.6, 0.6, features)
    centres = (shared + rng.normal(0, 0.015, (classes, features))).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    noise = (
        rng.gamma(0.6, 0.6, (rows, features)).astype(np.float32) - 0.36
    )  # classes overlap, as real ones do
    return np.clip(centres[labels] + noise, 0, 6), labels


def main() -> None:
    from reprotune.models.probe import accuracy, fit_linear_head
    from reprotune.pipeline.params import TrainHead

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=100)
    options = parser.parse_args()
    configured = TrainHead(**yaml.safe_load(Path("params.yaml").read_text())["train_head"])
    x, y = embeddings(options.rows, options.features, options.classes)
    fits = {}
    # params.yaml's values of C (train_head fits one head per value), then a weakly regularised C that
    # makes the solver work far harder.
    listed = configured.C if isinstance(configured.C, list) else [configured.C]
    for C in sorted({*listed, 100.0}):
        started = time.perf_counter()
        weight, bias, iterations = fit_linear_head(x, y, configured, options.classes, C)
        fits[f"C={C:g}"] = {
            "seconds": round(time.perf_counter() - started, 1),
            "iterations": iterations,
            "converged": iterations < configured.max_iter,
            "train_accuracy": round(accuracy(weight, bias, x, y), 4),
        }
    save(
        "probe",
        {
            "rows": options.rows,
            "features": options.features,
            "classes": options.classes,
            "max_iter": configured.max_iter,
            "target_seconds": 180,
            "fits": fits,
            # train_head fits one head per listed value: its time is their sum
            "train_head_seconds": round(sum(fits[f"C={C:g}"]["seconds"] for C in set(listed)), 1),
        },
    )
    print_table(
        f"linear probe on {options.rows} x {options.features} float32, {options.classes} classes (target < 180 s)",
        [
            (
                name,
                f"{fit['seconds']} s",
                f"{fit['iterations']} iterations, converged {fit['converged']}, train accuracy {fit['train_accuracy']}",
            )
            for name, fit in fits.items()
        ],
    )


if __name__ == "__main__":
    main()
