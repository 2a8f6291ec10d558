"""Fitting scikit-learn models the way the no-transfer baselines do: quietly (a slow candidate still gets
its val score) and with log-probabilities over every class, seen in training or not."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit, softmax
from sklearn.exceptions import ConvergenceWarning


def fit_quietly(model, x: np.ndarray, y: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a slow candidate still gets its val score
        return model.fit(x, y)


def log_probabilities(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Log-probabilities over every class (a class the model never saw gets log 0 = -inf's stand-in)."""
    probabilities = np.full((x.shape[0], num_classes), 1e-12)
    if hasattr(model, "predict_proba"):
        seen = model.predict_proba(x)
    else:  # an SVM that could not be calibrated (see with_probabilities)
        scores = model.decision_function(x)
        positive = expit(scores)[:, None] if scores.ndim == 1 else None  # two classes: one score
        seen = np.hstack([1 - positive, positive]) if positive is not None else softmax(scores, axis=1)
    probabilities[:, model.classes_] = np.maximum(seen, 1e-12)
    return np.log(probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)
