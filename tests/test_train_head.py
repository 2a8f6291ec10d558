import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from reprotune.models.probe import accuracy, fit_linear_head


def blobs(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, 16))
    labels = np.repeat(np.arange(classes), 30)
    return (centres[labels] + rng.normal(0, 1, (len(labels), 16))).astype(np.float32), labels


@pytest.mark.parametrize("classes", [2, 5])
def test_folded_head_reproduces_the_probe(classes):
    x, y = blobs(classes)
    weight, bias, iterations = fit_linear_head(x, y, 1.0, 500, classes)
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
    _, _, iterations = fit_linear_head(x, y, 100.0, 2, 4)
    assert iterations == 2
