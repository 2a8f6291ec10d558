"""Classes of unequal size: the weight each class gets in a training loss, and the validation score that
picks a model (the head's fit, the best epoch of a fine-tune, a tuning trial).

Weights (`class_weights`):
- `none`: every example counts once; the common class dominates the loss.
- `balanced`: each class in proportion to 1 / its count, so every class weighs the same in total
  (scikit-learn's `class_weight="balanced"`).
- `effective`: in proportion to 1 / the class's effective number of examples, (1 - beta^n) / (1 - beta)
  (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019): between `none`
  (beta -> 0) and `balanced` (beta -> 1), because extra examples of a class add less and less new
  information.

Weights are scaled so that the mean weight over the training examples is 1: the loss keeps its size, so a
learning rate or a C means the same with weights as without, and on balanced data every option is `none`.

Selection (`selection_score`): accuracy can be raised by ignoring a rare class; macro-F1 and balanced
accuracy (mean recall) cannot. On balanced data all three pick nearly the same model.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score


def class_weights(labels: np.ndarray, num_classes: int, how: str, beta: float) -> np.ndarray:
    """One weight per class (float64, `num_classes` long) for training examples labelled `labels`. A class
    with no example gets 1 (it never appears as a target, so its weight is never used)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.ones(num_classes)
    present = counts > 0
    if how == "none" or not present.any():
        return weights
    if how == "balanced":
        weights[present] = 1.0 / counts[present]
    elif how == "effective":
        weights[present] = (1.0 - beta) / (1.0 - beta ** counts[present])
    else:
        raise ValueError(f"unknown class weighting {how!r}: none, balanced or effective")
    weights[present] *= counts.sum() / float(np.sum(weights[present] * counts[present]))
    return weights


def selection_score(metric: str, labels: np.ndarray, predicted: np.ndarray) -> float:
    """How good `predicted` is for choosing between models: accuracy, macro_f1 (over the classes that occur
    among the labels or the predictions) or balanced_accuracy (the mean recall of the classes present)."""
    if metric == "accuracy":
        return float(accuracy_score(labels, predicted))
    with warnings.catch_warnings():  # a predicted class absent from the labels: scored as it should be
        warnings.simplefilter("ignore")
        if metric == "macro_f1":
            return float(f1_score(labels, predicted, average="macro", zero_division=0))
        if metric == "balanced_accuracy":
            return float(balanced_accuracy_score(labels, predicted))
    raise ValueError(f"unknown selection metric {metric!r}: accuracy, macro_f1 or balanced_accuracy")
