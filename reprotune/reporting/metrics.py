"""Classification metrics for the evaluate stage: pure functions of labels and probabilities.

Test sets in transfer learning are small, so accuracy comes with a bootstrap interval, and calibration
(expected calibration error, optionally after temperature scaling fitted on val) is reported beside it.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
    top_k_accuracy_score,
)


def bootstrap_intervals(
    labels: np.ndarray,
    predicted: np.ndarray,
    num_classes: int,
    resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy, balanced accuracy and macro-F1 (over all `num_classes`,
    as summary_metrics computes it), from the same resamples of the test items, drawn with replacement.
    Per-class counts are tallied for all resamples at once: no per-resample loop."""
    rng = np.random.default_rng(seed)
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    correct = labels == predicted
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    offsets = (np.arange(resamples) * num_classes)[:, None]

    def tally(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        keys = (offsets + values[draws]).ravel()
        weights = None if where is None else where[draws].ravel().astype(np.float64)
        return np.bincount(keys, weights, minlength=resamples * num_classes).reshape(resamples, -1)

    true, hits, said = tally(labels), tally(labels, correct), tally(predicted)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true > 0, hits / true, np.nan)  # classes absent from a resample are not averaged
        f1 = np.where(true + said > 0, 2 * hits / (true + said), 0.0)
    values = {
        "accuracy": correct[draws].mean(axis=1),
        "balanced_accuracy": np.nanmean(recall, axis=1),
        "macro_f1": f1.mean(axis=1),
    }
    tail = (1 - confidence) / 2 * 100
    return {
        name: tuple(float(v) for v in np.percentile(found, [tail, 100 - tail]))
        for name, found in values.items()
    }


def bootstrap_interval(
    labels: np.ndarray, predicted: np.ndarray, resamples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy: resample the test images with replacement."""
    classes = int(max(np.max(labels), np.max(predicted))) + 1
    return bootstrap_intervals(labels, predicted, classes, resamples, seed, confidence)["accuracy"]


def class_recall(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[dict]:
    """Per class: its items, how many were found, recall and its 95% Wilson score interval (binomial: honest
    for the few items of a rare class, where a bootstrap of 3 hits out of 3 says [1, 1])."""
    from scipy.stats import binomtest

    rows = []
    for index in range(num_classes):
        items = int(np.sum(labels == index))
        found = int(np.sum((labels == index) & (predicted == index)))
        if items:
            interval = binomtest(found, items).proportion_ci(0.95, method="wilson")
            rows.append(
                {
                    "items": items,
                    "found": found,
                    "recall": found / items,
                    "low": float(interval.low),
                    "high": float(interval.high),
                }
            )
        else:
            rows.append({"items": 0, "found": 0, "recall": None, "low": None, "high": None})
    return rows


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (empty bins have count 0)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur with softmax.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    return {"confidence": mean_confidence, "accuracy": accuracy, "count": counts}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> float:
    table = reliability(probabilities, labels, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float(np.sum(gaps * table["count"][filled]) / len(labels))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et al., 2017)."""

    def nll(log_t: float) -> float:
        scaled = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-scaled[np.arange(len(labels)), labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


def summary_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int, top_k: int, bins: int, resamples: int, seed: int
) -> dict[str, float]:
    """Headline metrics of one model on one split. top-k is left out when k >= the number of classes."""
    probabilities = softmax(logits, axis=1)
    predicted = probabilities.argmax(axis=1)
    indices = list(range(num_classes))
    intervals = bootstrap_intervals(labels, predicted, num_classes, resamples, seed)
    result = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "accuracy_ci_low": intervals["accuracy"][0],
        "accuracy_ci_high": intervals["accuracy"][1],
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "balanced_accuracy_ci_low": intervals["balanced_accuracy"][0],
        "balanced_accuracy_ci_high": intervals["balanced_accuracy"][1],
        "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
        "macro_f1_ci_low": intervals["macro_f1"][0],
        "macro_f1_ci_high": intervals["macro_f1"][1],
        "weighted_f1": float(
            f1_score(labels, predicted, labels=indices, average="weighted", zero_division=0)
        ),
        "log_loss": float(log_loss(labels, probabilities, labels=indices)),
        "ece": expected_calibration_error(probabilities, labels, bins),
    }
    if top_k < num_classes:
        result[f"top_{top_k}_accuracy"] = float(
            top_k_accuracy_score(labels, probabilities, k=top_k, labels=indices)
        )
    result["n"] = len(labels)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall (with its 95% Wilson interval), F1 and support per class, and the confusion matrix
    (rows: true, columns: predicted)."""
    indices = list(range(len(classes)))
    report = classification_report(
        labels, predicted, labels=indices, target_names=classes, output_dict=True, zero_division=0
    )
    recalls = class_recall(labels, predicted, len(classes))
    return {
        "classes": {
            name: {
                "precision": round(report[name]["precision"], 6),
                "recall": round(report[name]["recall"], 6),
                "recall_ci_low": None if recall["low"] is None else round(recall["low"], 6),
                "recall_ci_high": None if recall["high"] is None else round(recall["high"], 6),
                "f1": round(report[name]["f1-score"], 6),
                "support": int(report[name]["support"]),
            }
            for name, recall in zip(classes, recalls, strict=True)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }
