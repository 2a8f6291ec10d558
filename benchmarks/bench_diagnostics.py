"""Benchmark the three diagnostics on 10,000 images: the no-transfer baseline, the learning curve and the
label-issue search (target: all three under a minute on 2 cores).

    .venv/bin/python -m benchmarks.bench_diagnostics [--rows 10000] [--classes 10]

Embeddings are bench_probe's synthetic backbone-shaped ones (1,280 features); the baseline gets synthetic
32x32x3 pixel vectors (each class a smooth pattern plus noise), standardised as the stage does. Split 70/15/15.
params.yaml's settings throughout (baseline grid and search_images, learning_curve draws, label_issues
folds, train_head C). Decoding images is not included: it is the same per-image cost every stage pays
(see bench_featurize). Merged into reports/bench.json under "diagnostics".
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.bench_probe import embeddings
from benchmarks.results import print_table, save


def pixels(labels: np.ndarray, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 1, (classes, 3072)).cumsum(axis=1) / 30  # smooth, one per class
    return (patterns[labels] + rng.normal(0, 1.0, (len(labels), 3072))).astype(np.float32)


def main() -> None:
    from reprotune import params as params_module
    from stages.baseline import build, choose, fit_quietly, log_probabilities, with_probabilities
    from stages.label_issues import out_of_fold_probabilities, ranked_issues
    from stages.learning_curve import curve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    options = parser.parse_args()
    params = params_module.load()
    x, y = embeddings(options.rows, 1280, options.classes)
    cut = np.cumsum([int(0.7 * options.rows), int(0.15 * options.rows)])
    split = {
        name: slice(a, b)
        for name, a, b in zip(("train", "val", "test"), [0, *cut], [*cut, options.rows], strict=True)
    }
    seconds = {}

    started = time.perf_counter()
    raw = pixels(y, options.classes)
    mean, std = raw[split["train"]].mean(axis=0), raw[split["train"]].std(axis=0) + 1e-6
    px = {name: (raw[s] - mean) / std for name, s in split.items()}
    py = {name: y[s] for name, s in split.items()}
    best, tried, subset = choose(px, py, params.baseline)
    model = fit_quietly(with_probabilities(build(best, 3072), py["train"]), px["train"], py["train"])
    baseline_val = float(np.mean(log_probabilities(model, px["val"], options.classes).argmax(1) == py["val"]))
    seconds["baseline"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    data = {name: (x[s], y[s]) for name, s in split.items()}
    points = curve(data, params, options.classes, [str(c) for c in range(options.classes)])
    seconds["learning_curve"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    probs = out_of_fold_probabilities(x, y, np.arange(options.rows), params, options.classes)
    flagged = ranked_issues(y, probs, params.label_issues.filter_by)
    seconds["label_issues"] = round(time.perf_counter() - started, 1)
    total = round(sum(seconds.values()), 1)

    save(
        "diagnostics",
        {
            "rows": options.rows,
            "classes": options.classes,
            "seconds": seconds,
            "total_seconds": total,
            "target_seconds": 60,
            "baseline": {
                "chosen": best,
                "candidates": len(tried),
                "search_images": len(subset),
                "val_accuracy": round(baseline_val, 4),
            },
            "learning_curve_points": len(points),
            "label_issues_flagged": len(flagged),
        },
    )
    print_table(
        f"diagnostics on {options.rows} images, {options.classes} classes (target: all three < 60 s)",
        [
            (
                "baseline",
                f"{seconds['baseline']} s",
                f"{len(tried)} candidates on {len(subset)} images, then {best} on all",
            ),
            (
                "learning_curve",
                f"{seconds['learning_curve']} s",
                f"{len(points)} points x {params.learning_curve.draws} draws",
            ),
            (
                "label_issues",
                f"{seconds['label_issues']} s",
                f"{params.label_issues.folds} folds, {len(flagged)} flagged",
            ),
            ("total", f"{total} s", "met" if total < 60 else "MISSED"),
        ],
    )


if __name__ == "__main__":
    main()
