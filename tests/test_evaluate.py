import numpy as np
import pytest

from stages.evaluate import metrics


def test_perfect_and_worst_classifiers():
    labels = np.array([0, 0, 1, 1, 2, 2])
    perfect, per_class = metrics(labels, labels, ["a", "b", "c"])
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    assert per_class["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    worst, _ = metrics(labels, (labels + 1) % 3, ["a", "b", "c"])
    assert worst["accuracy"] == 0.0 and worst["macro_f1"] == 0.0


def test_hand_computed_with_a_class_never_predicted():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    summary, per_class = metrics(labels, predicted, ["a", "b", "c"])
    assert summary["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # a: p=1, r=2/3, f1=0.8; b: p=2/4, r=1, f1=2/3; c: never predicted, f1=0
    assert per_class["a"]["f1-score"] == pytest.approx(0.8, abs=1e-6)
    assert per_class["b"]["precision"] == pytest.approx(0.5, abs=1e-6)
    assert per_class["c"]["recall"] == 0.0 and per_class["c"]["support"] == 1
    assert summary["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3, abs=1e-6)
    assert per_class["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
