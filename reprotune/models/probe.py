"""The linear probe: a multinomial logistic regression on frozen embeddings, folded into one linear layer.

train_head fits it on the training split; learning_curve fits it on k images per class; label_issues fits it
on K - 1 folds to score the K-th. One function, so the three answer questions about the same model.

`train_head.C` is one value or a list to choose from: train_head fits one head per value and keeps the best
on val by `train_head.selection_metric` (`choose_head`), and records the value it kept in head.json; the
other stages fit their heads with that value (`chosen_C`), so that they all fit the head train_head chose.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from reprotune.models.imbalance import class_weights, selection_score
from reprotune.pipeline.atomic_io import read_json
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import TrainHead


def fit_linear_head(
    embeddings: np.ndarray, labels: np.ndarray, settings: TrainHead, num_classes: int, C: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (weight [classes, features], bias [classes], iterations) of a head on raw embeddings, fitted
    with inverse regularisation strength `C` and `settings`' max_iter and class weights. A class
    with no example among `labels` gets a row that never wins (its logit is -inf's stand-in, a large negative
    bias), so the head always has `num_classes` outputs."""
    present = np.unique(labels)
    mean, scale = embeddings.mean(axis=0), float(embeddings.std()) or 1.0
    weight = np.zeros((num_classes, embeddings.shape[1]))
    bias = np.full(num_classes, -1e4)
    if len(present) == 1:  # nothing to separate: every input gets the one class seen
        bias[present[0]] = 0.0
        return np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32), 0
    probe = LogisticRegression(C=C, max_iter=settings.max_iter)
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


@dataclass(frozen=True)
class ChosenHead:
    weight: np.ndarray
    bias: np.ndarray
    iterations: int
    C: float
    candidates: list[dict]  # per value of train_head.C: its val score and val loss and iterations


def choose_head(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    settings: TrainHead,
    num_classes: int,
) -> ChosenHead:
    """The head fitted on `train` with each of `settings.C`'s values, and the one with the best val score by
    `settings.selection_metric`; of equal scores, the lower val cross-entropy (then the first listed)."""
    values = settings.C if isinstance(settings.C, list) else [settings.C]
    if len(val[1]) == 0:
        if len(values) > 1:
            raise InputError(
                f"params.yaml: train_head.C lists {len(values)} values to choose from on val, and the val split "
                "is empty: give one value"
            )
        weight, bias, iterations = fit_linear_head(*train, settings, num_classes, values[0])
        return ChosenHead(weight, bias, iterations, values[0], [{"C": values[0], "iterations": iterations}])
    best, best_key, candidates = None, None, []
    for C in values:
        weight, bias, iterations = fit_linear_head(*train, settings, num_classes, C)
        val_logits = logits(weight, bias, val[0]).astype(np.float64)
        score = selection_score(settings.selection_metric, val[1], val_logits.argmax(axis=1))
        # The bias of a class train lacks is a large negative stand-in for -inf: cap its log-probability so
        # that the loss stays finite (it is the same for every value of C).
        loss = float(
            -np.mean(np.maximum(log_softmax(val_logits, axis=1)[np.arange(len(val[1])), val[1]], -50))
        )
        candidates.append(
            {"C": C, "val_score": round(score, 6), "val_loss": round(loss, 6), "iterations": iterations}
        )
        if best_key is None or (score, -loss) > best_key:
            best, best_key = ChosenHead(weight, bias, iterations, C, candidates), (score, -loss)
    assert best is not None
    return best


def chosen_C(head_meta: Path) -> float:
    """The value of train_head.C that train_head chose (head.json), which every other fit of the head uses."""
    return float(read_json(head_meta)["C"])


def logits(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    return embeddings @ weight.T + bias


def probabilities(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    return softmax(logits(weight, bias, embeddings).astype(np.float64), axis=1)


def accuracy(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits(weight, bias, embeddings), axis=1) == labels))
