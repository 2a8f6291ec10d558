"""The no-transfer baseline: pixels, the search on val, and probabilities every class gets."""

import numpy as np
import pytest
from PIL import Image

from reprotune.modalities.image.baseline import (
    build,
    candidates,
    choose,
    fit_quietly,
    log_probabilities,
    model_inputs,
    pixel_features,
    squared_distances,
    training_subset,
    with_probabilities,
)
from reprotune.pipeline.params import Baseline


def settings(**changes) -> Baseline:
    values = dict(image_size=8, C=[0.1, 10.0], gamma=[1.0], max_train_images=1000, seed=0) | changes
    return Baseline(**values)


def stripes(count: int, horizontal: bool, rng) -> np.ndarray:
    """8x8 images that are either horizontal or vertical stripes, noisy: pixels separate them, no mean does."""
    base = np.tile((np.arange(8) % 2)[:, None], (1, 8)).astype(float)
    base = base if horizontal else base.T
    return np.stack([(base + rng.normal(0, 0.3, (8, 8))).ravel() for _ in range(count)])


def test_pixels_are_the_picture_shrunk_by_area_averaging(tmp_path):
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[:, 32:] = 255  # left half black, right half white
    Image.fromarray(picture).save(tmp_path / "a.png")
    import pandas as pd

    rows = pd.DataFrame({"path": [str(tmp_path / "a.png")], "resized": [-1]})
    features = pixel_features(rows, tmp_path / "none.safetensors", 4, (255, 255, 255))
    assert features.shape == (1, 48)
    np.testing.assert_allclose(features.reshape(4, 4, 3)[:, :, 0], [[0, 0, 1, 1]] * 4)


def test_the_search_keeps_the_best_on_val_and_ties_go_to_the_simplest():
    rng = np.random.default_rng(0)
    x = {s: np.vstack([stripes(20, True, rng), stripes(20, False, rng)]) for s in ("train", "val")}
    y = {s: np.repeat([0, 1], 20) for s in ("train", "val")}
    subset = training_subset(y["train"], 1000, 0)
    best, tried = choose(x, y, subset, squared_distances(x, subset), settings())
    assert [c["model"] for c in tried] == ["logistic_regression"] * 2 + ["rbf_svm"] * 2
    top = max(c["val_accuracy"] for c in tried)
    assert top == 1.0
    first_best = next(c for c in tried if c["val_accuracy"] == top)
    assert best == {k: v for k, v in first_best.items() if k != "val_accuracy"}
    assert len(subset) == 40


def test_the_training_subset_keeps_every_class_in_proportion():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    chosen = training_subset(labels, 100, 0)
    assert len(chosen) == 100 and list(np.bincount(labels[chosen])) == [50, 30, 20]
    assert list(training_subset(labels[:10], 100, 0)) == list(range(10))


@pytest.mark.parametrize("classes", [2, 3])
def test_probabilities_cover_every_class_and_sum_to_one(classes):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (60, 5)) + np.repeat(np.arange(classes), 60 // classes)[:, None]
    y = np.repeat(np.arange(classes), 60 // classes)
    data, everything = {"train": x, "test": x}, np.arange(len(y))
    for candidate in candidates(settings(C=[1.0], gamma=[1.0])):
        inputs = model_inputs(candidate, data, everything, squared_distances(data, everything))
        model = fit_quietly(with_probabilities(build(candidate), y), inputs["train"], y)
        scores = log_probabilities(model, inputs["test"], classes + 1)  # one class more than the data has
        probabilities = np.exp(scores)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
        assert probabilities[:, classes].max() < 1e-6  # the unseen class never wins
        assert np.mean(probabilities.argmax(axis=1) == y) > 0.6


def test_an_svm_with_a_one_image_class_still_gives_probabilities():
    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(0, 1, (10, 3)), [[5, 5, 5]]])
    y = np.array([0] * 10 + [1])
    candidate = {"model": "rbf_svm", "C": 1.0, "gamma": 1.0}
    data, everything = {"train": x, "test": x}, np.arange(len(y))
    kernel = model_inputs(candidate, data, everything, squared_distances(data, everything))
    model = fit_quietly(with_probabilities(build(candidate), y), kernel["train"], y)
    probabilities = np.exp(log_probabilities(model, kernel["test"], 2))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert probabilities[:, 1].argmax() == 10


def test_the_precomputed_kernel_is_scikit_learns_rbf_svm():
    """The search hands libsvm the kernel computed with BLAS; the SVM must be the one SVC(kernel="rbf") fits."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(3)
    x = {"train": rng.normal(0, 1, (80, 12)), "val": rng.normal(0, 1, (30, 12))}
    y = (x["train"][:, 0] * x["train"][:, 1] > 0).astype(int)  # not linearly separable
    subset = training_subset(y, 60, 0)
    candidate = {"model": "rbf_svm", "C": 3.0, "gamma": 2.0}
    inputs = model_inputs(candidate, x, subset, squared_distances(x, subset))
    ours = build(candidate).fit(inputs["train"], y[subset])
    reference = SVC(C=3.0, gamma=2.0 / 12).fit(x["train"][subset], y[subset])
    np.testing.assert_allclose(
        ours.decision_function(inputs["val"]), reference.decision_function(x["val"]), atol=1e-6
    )
