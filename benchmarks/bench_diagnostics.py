"""Benchmark the three diagnostics on 10,000 images: the no-transfer baseline, the learning curve and the
label-issue search (target: all three under a minute on 2 cores).

    .venv/bin/python -m benchmarks.bench_diagnostics [--rows 10000] [--classes 10]

Embeddings are backbone-shaped (1,280 non-negative pooled features, as bench_probe's) with classes a linear
head separates about as well as it does real ones, and 5% of the labels flipped at random, so the label-issue
search is measured on what it is for (recall and precision reported). The baseline gets 32x32x3 pixel vectors
(each class a smooth pattern plus noise). Split 70/15/15; params.yaml's settings throughout (the baseline
grid and max_train_images, learning_curve draws, label_issues folds, train_head C). Decoding images is not
included: it is the per-image cost every stage pays (see bench_featurize). Merged into reports/bench.json
under "diagnostics".
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.results import print_table, save


def embeddings(rows: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.gamma(0.6, 0.6, 1280)
    centres = shared + rng.normal(0, 0.1, (classes, 1280))
    labels = rng.integers(0, classes, rows)
    noise = rng.gamma(0.6, 0.6, (rows, 1280)) - 0.36
    return np.clip(centres[labels] + noise, 0, 6).astype(np.float32), labels


def pixels(labels: np.ndarray, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 1, (classes, 3072)).cumsum(axis=1) / 30  # smooth, one per class
    return (patterns[labels] + rng.normal(0, 1.0, (len(labels), 3072))).astype(np.float32)


def main() -> None:
    from reprotune.modalities.image.baseline import (
        build,
        choose,
        fit_quietly,
        log_probabilities,
        model_inputs,
        squared_distances,
        training_subset,
        with_probabilities,
    )
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.resolve import for_data
    from stages.label_issues import out_of_fold_probabilities, ranked_issues
    from stages.learning_curve import curve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    options = parser.parse_args()
    params = for_data(params_module.load())
    x, clean_labels = embeddings(options.rows, options.classes)
    rng = np.random.default_rng(1)
    flipped = rng.choice(options.rows, options.rows // 20, replace=False)
    y = clean_labels.copy()
    y[flipped] = (y[flipped] + rng.integers(1, options.classes, len(flipped))) % options.classes
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
    subset = training_subset(py["train"], params.baseline.max_train_images, params.baseline.seed)
    distances = squared_distances(px, subset)
    best, tried = choose(px, py, subset, distances, params.baseline)
    inputs = model_inputs(best, px, subset, distances)
    model = fit_quietly(
        with_probabilities(build(best), py["train"][subset]), inputs["train"], py["train"][subset]
    )
    scores = log_probabilities(model, inputs["val"], options.classes)
    baseline_val = float(np.mean(scores.argmax(1) == py["val"]))
    seconds["baseline"] = round(time.perf_counter() - started, 1)
    # Where an SVM wins, its final fit adds Platt scaling's cross-validation: time that too.
    started = time.perf_counter()
    svm = {"model": "rbf_svm", "C": max(params.baseline.C), "gamma": max(params.baseline.gamma)}
    kernel = model_inputs(svm, px, subset, distances)
    fit_quietly(with_probabilities(build(svm), py["train"][subset]), kernel["train"], py["train"][subset])
    svm_final = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    data = {name: (x[s], y[s]) for name, s in split.items()}
    points = curve(data, params, options.classes, [str(c) for c in range(options.classes)])
    seconds["learning_curve"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    probs = out_of_fold_probabilities(x, y, np.arange(options.rows), params, options.classes)
    flagged = ranked_issues(y, probs, params.label_issues.filter_by)
    seconds["label_issues"] = round(time.perf_counter() - started, 1)
    hits = len(set(flagged) & set(flipped))
    recall, precision = hits / len(flipped), hits / max(1, len(flagged))
    total = round(sum(seconds.values()), 1)

    save(
        "diagnostics",
        {
            "rows": options.rows,
            "classes": options.classes,
            "seconds": seconds,
            "total_seconds": total,
            "target_seconds": 60,
            "baseline_svm_final_fit_seconds": svm_final,
            "baseline": {
                "chosen": best,
                "candidates": len(tried),
                "max_train_images": len(subset),
                "val_accuracy": round(baseline_val, 4),
            },
            "learning_curve_points": len(points),
            "learning_curve_all_data_test_accuracy": points[-1]["test"]["mean"],
            "label_issues": {
                "flipped": len(flipped),
                "flagged": len(flagged),
                "recall": round(recall, 3),
                "precision": round(precision, 3),
            },
        },
    )
    print_table(
        f"diagnostics on {options.rows} images, {options.classes} classes (target: all three < 60 s)",
        [
            (
                "baseline",
                f"{seconds['baseline']} s",
                f"{len(tried)} candidates on {len(subset)} images; {best} kept "
                f"(an SVM's final fit with Platt scaling: {svm_final} s more)",
            ),
            (
                "learning_curve",
                f"{seconds['learning_curve']} s",
                f"{len(points)} points x {params.learning_curve.draws} draws",
            ),
            (
                "label_issues",
                f"{seconds['label_issues']} s",
                f"{params.label_issues.folds} folds, {len(flagged)} flagged of {len(flipped)} flipped: "
                f"recall {recall:.2f}, precision {precision:.2f}",
            ),
            ("total", f"{total} s", "met" if total < 60 else "MISSED"),
        ],
    )


if __name__ == "__main__":
    main()
