"""train_head: a multinomial logistic regression on the frozen embeddings (the linear probe).

Embeddings are centred and divided by one global standard deviation for the solver; that scaling is then
folded into the weights, so the saved head is one plain linear layer (weight, bias) that finetune can start
from and evaluate can apply as is. The scale is global, not per feature: some pooled features barely vary,
and dividing by their tiny deviations gave weights in the thousands that blew up as soon as fine-tuning
perturbed the features.
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from reprotune import stage
from reprotune.layout import Layout, atomic_output, read_json
from reprotune.params import Params, TrainHead

log = logging.getLogger(__name__)


def fit_linear_head(
    embeddings: np.ndarray, labels: np.ndarray, settings: TrainHead, num_classes: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (weight [classes, features], bias [classes], iterations) of a head on raw embeddings."""
    mean, scale = embeddings.mean(axis=0), float(embeddings.std()) or 1.0
    probe = LogisticRegression(C=settings.C, max_iter=settings.max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below as `converged`
        probe.fit((embeddings - mean) / scale, labels)
    if list(probe.classes_) != list(range(num_classes)):
        raise AssertionError("every class has training embeddings (the split stage guarantees it)")
    coef, intercept = probe.coef_, probe.intercept_
    if num_classes == 2:  # scikit-learn keeps one row for two classes; softmax over [-z/2, z/2] is the same
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = coef / scale
    bias = intercept - weight @ mean
    return (
        np.ascontiguousarray(weight, np.float32),
        np.ascontiguousarray(bias, np.float32),
        int(np.max(probe.n_iter_)),
    )


def accuracy(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(embeddings @ weight.T + bias, axis=1) == labels))


def train_head(params: Params) -> None:
    layout = Layout(params.paths)
    classes = read_json(layout.features_meta)["classes"]
    train = load_file(layout.features_file("train"))
    val = load_file(layout.features_file("val"))
    x_train, y_train = train["embeddings"].numpy(), train["labels"].numpy()
    weight, bias, iterations = fit_linear_head(x_train, y_train, params.train_head, len(classes))
    converged = iterations < params.train_head.max_iter
    summary = {
        "classes": classes,
        "iterations": iterations,
        "converged": converged,
        "train_accuracy": accuracy(weight, bias, x_train, y_train),
        "val_accuracy": accuracy(weight, bias, val["embeddings"].numpy(), val["labels"].numpy()),
    }
    if not converged:
        log.warning("the probe did not converge in %d iterations: raise train_head.max_iter", iterations)
    with atomic_output(layout.head) as staging:
        staging.mkdir()
        save_file(
            {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)},
            staging / layout.head_weights.name,
        )
        (staging / layout.head_meta.name).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info(
        "head: %d iterations, train accuracy %.4f, val accuracy %.4f",
        iterations,
        summary["train_accuracy"],
        summary["val_accuracy"],
    )


def main() -> None:
    stage.run(train_head)


if __name__ == "__main__":
    main()
