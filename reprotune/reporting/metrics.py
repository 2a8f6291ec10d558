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


def bootstrap_interval(
    labels: np.ndarray, predicted: np.ndarray, resamples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy: resample the test images with replacement."""
    rng = np.random.default_rng(seed)
    correct = (labels == predicted).astype(np.float64)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    accuracies = correct[draws].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(accuracies, [tail, 100 - tail])
    return float(low), float(high)


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
    low, high = bootstrap_interval(labels, predicted, resamples, seed)
    result = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
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
    """Precision, recall, F1 and support per class, and the confusion matrix (rows: true, columns: predicted)."""
    indices = list(range(len(classes)))
    report = classification_report(
        labels, predicted, labels=indices, target_names=classes, output_dict=True, zero_division=0
    )
    return {
        "classes": {
            name: {
                "precision": round(report[name]["precision"], 6),
                "recall": round(report[name]["recall"], 6),
                "f1": round(report[name]["f1-score"], 6),
                "support": int(report[name]["support"]),
            }
            for name in classes
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }
