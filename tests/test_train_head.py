import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from reprotune.models.probe import accuracy, choose_head, fit_linear_head
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import TrainHead


def head(
    C: float | list[float] = 1.0,
    max_iter: int = 500,
    class_weights: str = "none",
    beta: float = 0.999,
    metric: str = "macro_f1",
) -> TrainHead:
    return TrainHead(
        C=C, selection_metric=metric, max_iter=max_iter, class_weights=class_weights, class_weight_beta=beta
    )


def blobs(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, 16))
    labels = np.repeat(np.arange(classes), 30)
    return (centres[labels] + rng.normal(0, 1, (len(labels), 16))).astype(np.float32), labels


@pytest.mark.parametrize("classes", [2, 5])
def test_folded_head_reproduces_the_probe(classes):
    x, y = blobs(classes)
    weight, bias, iterations = fit_linear_head(x, y, head(), classes, 1.0)
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
    _, _, iterations = fit_linear_head(x, y, head(max_iter=2), 4, 100.0)
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
        weight, bias, _ = fit_linear_head(x, y, head(class_weights=how, beta=0.99), 2, 1.0)
        recall[how] = float(np.mean(np.argmax(test_x @ weight.T + bias, axis=1) == 1))
    assert recall["none"] < 0.3 and recall["balanced"] > 0.7
    assert recall["none"] < recall["effective"] < recall["balanced"]


def test_weights_change_nothing_on_balanced_classes():
    x, y = blobs(3)
    plain = fit_linear_head(x, y, head(), 3, 1.0)
    for how in ("balanced", "effective"):
        weighted = fit_linear_head(x, y, head(class_weights=how), 3, 1.0)
        np.testing.assert_allclose(weighted[0], plain[0], atol=1e-4)


def test_C_is_chosen_on_val_by_the_selection_metric():
    """Noisy features with few examples: a tiny C (a head near the class priors) and a huge one (fitting the
    noise) both lose to a moderate one on val; each candidate is recorded with its val score, and the head
    returned is the one fitted with the chosen C."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 0.3, (3, 64))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(3), n)
        return (centres[labels] + rng.normal(0, 1, (len(labels), 64))).astype(np.float32), labels

    train, val = draw(15), draw(200)
    chosen = choose_head(train, val, head(C=[1e-6, 0.01, 1e4], max_iter=2000), 3)
    assert [c["C"] for c in chosen.candidates] == [1e-6, 0.01, 1e4]
    scores = {c["C"]: c["val_score"] for c in chosen.candidates}
    assert chosen.C == 0.01 and scores[0.01] > max(scores[1e-6], scores[1e4])
    weight, bias, _ = fit_linear_head(*train, head(max_iter=2000), 3, 0.01)
    np.testing.assert_array_equal(chosen.weight, weight)
    np.testing.assert_array_equal(chosen.bias, bias)


def test_equal_val_scores_go_to_the_lower_val_loss():
    """Separable blobs: every C scores 1.0 on val, and the weakly regularised head, surer of each right
    answer, has the lower val loss."""
    x, y = blobs(3)
    chosen = choose_head((x[::2], y[::2]), (x[1::2], y[1::2]), head(C=[0.001, 10.0]), 3)
    assert [c["val_score"] for c in chosen.candidates] == [1.0, 1.0]
    assert chosen.C == 10.0 and chosen.candidates[1]["val_loss"] < chosen.candidates[0]["val_loss"]


def test_candidates_are_scored_by_the_selection_metric():
    """A rare class that a strongly regularised head gives up: its val accuracy stays high (the common class
    is nearly all of val) while its macro-F1 halves; each candidate's recorded score is the metric asked for."""
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (300, 8)), rng.normal(1.5, 1, (6, 8))]).astype(np.float32)
    y = np.array([0] * 300 + [1] * 6)
    val_x = np.vstack([rng.normal(0, 1, (300, 8)), rng.normal(1.5, 1, (6, 8))]).astype(np.float32)
    for metric, scorer in (
        ("accuracy", accuracy_score),
        ("macro_f1", lambda t, p: f1_score(t, p, average="macro", zero_division=0)),
        ("balanced_accuracy", balanced_accuracy_score),
    ):
        chosen = choose_head((x, y), (val_x, y), head(C=[1e-4, 10.0], metric=metric), 2)
        for candidate in chosen.candidates:
            weight, bias, _ = fit_linear_head(x, y, head(), 2, candidate["C"])
            expected = scorer(y, np.argmax(val_x @ weight.T + bias, axis=1))
            assert candidate["val_score"] == pytest.approx(expected, abs=1e-6)
        assert chosen.C == max(chosen.candidates, key=lambda c: c["val_score"])["C"]
    strong = choose_head((x, y), (val_x, y), head(C=1e-4, metric="macro_f1"), 2).candidates[0]
    assert strong["val_score"] < 0.5  # the rare class given up: F1 0 for it


def test_a_list_of_C_needs_val_items():
    x, y = blobs(2)
    empty = (np.zeros((0, 16), np.float32), np.zeros(0, int))
    with pytest.raises(InputError, match="train_head.C lists 2 values"):
        choose_head((x, y), empty, head(C=[0.1, 1.0]), 2)
    assert choose_head((x, y), empty, head(C=0.5), 2).C == 0.5
