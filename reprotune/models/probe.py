"""The linear probe: a multinomial logistic regression on frozen embeddings, folded into one linear layer.

train_head fits it on the training split; learning_curve fits it on k images per class; label_issues fits it
on K - 1 folds to score the K-th. One function, so the three answer questions about the same model.

Embeddings are centred and divided by one global standard deviation for the solver; that scaling is then
folded into the weights, so the result is one plain linear layer (weight, bias) that finetune can start
from and evaluate can apply as is. The scale is global, not per feature: some pooled features barely vary,
and dividing by their tiny deviations gave weights in the thousands that blew up as soon as fine-tuning
perturbed the features.

Classes of unequal size are weighted as `train_head.class_weights` says (reprotune/models/imbalance.py), in all
three: the same head.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from reprotune.models.imbalance import class_weights
from reprotune.pipeline.params import TrainHead


def fit_linear_head(
    embeddings: np.ndarray, labels: np.ndarray, settings: TrainHead, num_classes: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (weight [classes, features], bias [classes], iterations) of a head on raw embeddings, fitted
    with `settings` (C, max_iter, class weights). A class
    with no example among `labels` gets a row that never wins (its logit is -inf's stand-in, a large negative
    bias), so the head always has `num_classes` outputs."""
    present = np.unique(labels)
    mean, scale = embeddings.mean(axis=0), float(embeddings.std()) or 1.0
    weight = np.zeros((num_classes, embeddings.shape[1]))
    bias = np.full(num_classes, -1e4)
    if len(present) == 1:  # nothing to separate: every input gets the one class seen
        bias[present[0]] = 0.0
        return np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32), 0
    probe = LogisticRegression(C=settings.C, max_iter=settings.max_iter)
    weights = class_weights(labels, num_classes, settings.class_weights, settings.class_weight_beta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # callers report `iterations` against max_iter
        probe.fit((embeddings - mean) / scale, labels, sample_weight=weights[labels])
    coef, intercept = probe.coef_, probe.intercept_
    if len(present) == 2:  # scikit-learn keeps one row for two classes; softmax over [-z/2, z/2] is the same
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    folded = coef / scale
    weight[present] = folded
    bias[present] = intercept - folded @ mean
    return (
        np.ascontiguousarray(weight, np.float32),
        np.ascontiguousarray(bias, np.float32),
        int(np.max(probe.n_iter_)),
    )


def logits(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    return embeddings @ weight.T + bias


def probabilities(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    return softmax(logits(weight, bias, embeddings).astype(np.float64), axis=1)


def accuracy(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits(weight, bias, embeddings), axis=1) == labels))
