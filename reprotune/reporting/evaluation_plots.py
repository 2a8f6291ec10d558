"""The evaluate stage's figures, as PNG files for people and for MLflow. Each one stays readable from 2 to 50+
classes: sizes grow with the class count, and per-cell numbers or per-class curves give way when crowded."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from reprotune.reporting.figures import save

ANNOTATE_UP_TO = 20  # classes; beyond this, cell numbers overlap
CURVES_UP_TO = 10  # classes drawn in the PR plot; beyond this only the worst by average precision


def confusion(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    """Counts and row-normalised (recall per true class) side by side."""
    matrix = np.asarray(matrix)
    side = min(24.0, max(4.0, 0.32 * len(classes) + 2.5))
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    with np.errstate(invalid="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    for ax, values, name, fmt in (
        (axes[0], matrix, "counts", "d"),
        (axes[1], normalised, "row-normalised", ".2f"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 8 else 0, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
        if len(classes) <= ANNOTATE_UP_TO:
            threshold = values.max() / 2 if values.max() else 1
            for (row, column), value in np.ndenumerate(values):
                ax.text(
                    column,
                    row,
                    format(value, fmt),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > threshold else "black",
                )
    save(figure, path)


def precision_recall(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], title: str, path: Path
) -> None:
    """One-vs-rest precision-recall curves; with many classes, the worst ones by average precision."""
    present = [c for c in range(len(classes)) if (labels == c).any()]
    precision_of = {c: average_precision_score(labels == c, probabilities[:, c]) for c in present}
    shown = sorted(present, key=precision_of.get)[:CURVES_UP_TO]
    figure, ax = plt.subplots(figsize=(7, 5.5))
    for c in shown:
        precision, recall, _ = precision_recall_curve(labels == c, probabilities[:, c])
        ax.step(recall, precision, where="post", label=f"{classes[c]} (AP {precision_of[c]:.3f})")
    worst = "" if len(shown) == len(present) else f", the {len(shown)} lowest of {len(present)} classes"
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02), title=f"{title}{worst}")
    ax.legend(fontsize=7, loc="lower left")
    save(figure, path)


def reliability_diagram(tables: dict[str, dict[str, np.ndarray]], eces: dict[str, float], path: Path) -> None:
    """Accuracy against confidence per bin, one panel per model; bars on the diagonal are calibrated."""
    figure, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 4.8), squeeze=False)
    for ax, (model, table) in zip(axes[0], tables.items(), strict=True):
        bins = len(table["count"])
        edges = np.linspace(0, 1, bins + 1)
        filled = table["count"] > 0
        ax.bar(
            edges[:-1][filled],
            table["accuracy"][filled],
            width=1 / bins,
            align="edge",
            edgecolor="black",
            alpha=0.8,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set(
            xlabel="confidence",
            ylabel="accuracy",
            xlim=(0, 1),
            ylim=(0, 1),
            title=f"{model}: ECE {eces[model]:.3f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    save(figure, path)


def training_curves(history: list[dict[str, float]], path: Path) -> None:
    figure, (losses, accuracy) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    losses.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss (augmented, smoothed)")
    losses.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation loss")
    losses.set(xlabel="epoch", ylabel="cross-entropy", title="fine-tuning losses")
    losses.legend(fontsize=8)
    accuracy.plot(epochs, [r["val_accuracy"] for r in history], "o-", color="tab:green")
    accuracy.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    for ax in (losses, accuracy):
        ax.xaxis.get_major_locator().set_params(integer=True)
    save(figure, path)


def mistake_captions(mistakes: list[tuple[str, str, str, float]]) -> list[tuple[str, str]]:
    """(item, true, predicted, confidence), most confident first, as a figure's (item, caption)."""
    return [
        (item, f"true {true}\npredicted {predicted} ({confidence:.0%})")
        for item, true, predicted, confidence in mistakes
    ]


def per_class_f1(classes: list[str], f1_by_model: dict[str, list[float]], path: Path) -> None:
    """Grouped bars, one group per class and one bar per model: where transfer and fine-tuning helped or hurt."""
    width = 0.8 / len(f1_by_model)
    figure, ax = plt.subplots(figsize=(min(30.0, max(6.0, 0.35 * len(classes) * len(f1_by_model) + 2)), 4.5))
    positions = np.arange(len(classes))
    for offset, (model, scores) in enumerate(f1_by_model.items()):
        ax.bar(positions + offset * width - 0.4 + width / 2, scores, width=width, label=model)
    ax.set_xticks(positions, classes, rotation=90 if len(classes) > 8 else 0, fontsize=8)
    # Zoom to the range the scores span: differences of a few points are what this plot is for.
    lowest = min(min(scores) for scores in f1_by_model.values())
    floor = max(0.0, np.floor((lowest - 0.05) * 10) / 10)
    ax.set(ylabel="F1 (test)", ylim=(floor, 1.0), title="per-class F1: " + ", ".join(f1_by_model))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    save(figure, path)
