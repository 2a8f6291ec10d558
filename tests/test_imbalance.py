import numpy as np
import pytest

from reprotune.models.imbalance import class_weights, selection_score


def test_balanced_weights_give_every_class_the_same_total_and_keep_the_mean_at_one():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    weights = class_weights(labels, 4, "balanced", 0.999)
    totals = weights[:3] * np.bincount(labels)
    np.testing.assert_allclose(totals, totals[0])
    assert weights[labels].mean() == pytest.approx(1.0)
    assert weights[3] == 1.0  # absent from training: never a target


def test_effective_weights_lie_between_none_and_balanced():
    labels = np.array([0] * 1000 + [1] * 10)
    balanced = class_weights(labels, 2, "balanced", 0.999)
    effective = class_weights(labels, 2, "effective", 0.999)
    ratio = lambda w: w[1] / w[0]  # noqa: E731
    assert 1.0 < ratio(effective) < ratio(balanced)
    assert effective[labels].mean() == pytest.approx(1.0)
    # beta near 1 is balanced; small beta is no weighting
    assert ratio(class_weights(labels, 2, "effective", 0.999999)) == pytest.approx(ratio(balanced), rel=0.01)
    assert ratio(class_weights(labels, 2, "effective", 0.5)) == pytest.approx(1.0, abs=1e-2)


def test_none_and_balanced_data_weigh_every_example_once():
    labels = np.repeat(np.arange(5), 7)
    for how in ("none", "balanced", "effective"):
        np.testing.assert_allclose(class_weights(labels, 5, how, 0.99), np.ones(5))


def test_selection_scores_see_a_rare_class_that_accuracy_ignores():
    labels = np.array([0] * 95 + [1] * 5)
    ignores_rare = np.zeros(100, dtype=int)
    finds_rare = np.array([0] * 89 + [1] * 6 + [1] * 5)  # 6 false alarms, the rare class found
    assert selection_score("accuracy", labels, ignores_rare) > selection_score("accuracy", labels, finds_rare)
    for metric in ("macro_f1", "balanced_accuracy"):
        assert selection_score(metric, labels, finds_rare) > selection_score(metric, labels, ignores_rare)
    assert selection_score("balanced_accuracy", labels, ignores_rare) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="selection metric"):
        selection_score("auc", labels, finds_rare)
