import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from reprotune.models.probe import accuracy, fit_linear_head
from reprotune.pipeline.params import TrainHead


def head(C: float = 1.0, max_iter: int = 500, class_weights: str = "none", beta: float = 0.999) -> TrainHead:
    return TrainHead(C=C, max_iter=max_iter, class_weights=class_weights, class_weight_beta=beta)


def blobs(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, 16))
    labels = np.repeat(np.arange(classes), 30)
    return (centres[labels] + rng.normal(0, 1, (len(labels), 16))).astype(np.float32), labels


@pytest.mark.parametrize("classes", [2, 5])
def test_folded_head_reproduces_the_probe(classes):
    x, y = blobs(classes)
    weight, bias, iterations = fit_linear_head(x, y, head(), classes)
    assert weight.shape == (classes, 16) and bias.shape == (classes,)
    assert 0 < iterations < 500
    # The folded head must give the same probabilities as scikit-learn on the scaled inputs.
    mean, scale = x.mean(axis=0), x.std()
    reference = LogisticRegression(C=1.0, max_iter=500).fit((x - mean) / scale, y)
    logits = x @ weight.T + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, reference.predict_proba((x - mean) / scale), atol=1e-4)
    assert accuracy(weight, bias, x, y) > 0.95


def test_iterations_are_reported_when_capped():
    x, y = blobs(4)
    _, _, iterations = fit_linear_head(x, y, head(C=100.0, max_iter=2), 4)
    assert iterations == 2


def test_balanced_weights_raise_the_rare_class_recall():
    """Two overlapping classes, 300 against 15 examples: unweighted, the rare one is mostly given up; weighted
    as `balanced`, most of it is found (and `effective` lies between)."""
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (300, 8)), rng.normal(0.7, 1, (15, 8))]).astype(np.float32)
    y = np.array([0] * 300 + [1] * 15)
    test_x = rng.normal(0.7, 1, (200, 8)).astype(np.float32)  # rare-class examples only
    recall = {}
    for how in ("none", "effective", "balanced"):
        weight, bias, _ = fit_linear_head(x, y, head(class_weights=how, beta=0.99), 2)
        recall[how] = float(np.mean(np.argmax(test_x @ weight.T + bias, axis=1) == 1))
    assert recall["none"] < 0.3 and recall["balanced"] > 0.7
    assert recall["none"] < recall["effective"] < recall["balanced"]


def test_weights_change_nothing_on_balanced_classes():
    x, y = blobs(3)
    plain = fit_linear_head(x, y, head(), 3)
    for how in ("balanced", "effective"):
        weighted = fit_linear_head(x, y, head(class_weights=how), 3)
        np.testing.assert_allclose(weighted[0], plain[0], atol=1e-4)
