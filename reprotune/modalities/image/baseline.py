"""The no-transfer baseline on images: every kept image is shrunk to `baseline.image_size` squared (area
averaging, after the same decoding as every other stage; large images are read from clean's resized copy,
the same picture), each pixel standardised on the training split. Candidates: logistic regression for each
`baseline.C`, and an RBF SVM for each C and gamma (in multiples of 1 / features, so the grid means the same
at any image size). Each is fitted on the training images, at most `baseline.max_train_images` of them (a
stratified sample, the same for every candidate, since an SVM's cost grows with the square of the count;
the report says when the cap left images out), and scored on val. The SVMs get their kernel precomputed
with BLAS, once per gamma. The best on val (ties: the first, so logistic regression before the SVM, small
C before large) is fitted again on those images with probabilities (for the SVM, Platt scaling on
cross-validated decision values). Test is never looked at here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from reprotune.data.images import Background, load_rgb
from reprotune.data.resized import NO_COPY, ResizedCopies
from reprotune.models.sklearn_fitting import fit_quietly, log_probabilities
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Baseline

SCORED_SPLITS = ("val", "test")


def pixel_features(rows: pd.DataFrame, copies: Path, side: int, background: Background) -> np.ndarray:
    """(images, side * side * 3) float32 in [0, 1]: each picture squashed to side x side by area averaging."""
    pack = ResizedCopies(copies)
    features = np.empty((len(rows), side * side * 3), np.float32)
    for index, (path, copy) in enumerate(zip(rows["path"], rows["resized"].astype(int), strict=True)):
        picture = load_rgb(Path(path), background, side) if copy == NO_COPY else pack.image(copy)
        features[index] = np.asarray(picture.resize((side, side), Image.Resampling.BOX), np.float32).ravel()
    return features / 255.0


def candidates(settings: Baseline) -> list[dict]:
    """Every model the search tries, simplest first (the order breaks ties)."""
    return [{"model": "logistic_regression", "C": C} for C in settings.C] + [
        {"model": "rbf_svm", "C": C, "gamma": gamma} for C in settings.C for gamma in settings.gamma
    ]


def build(candidate: dict):
    """The candidate's model; an SVM takes its RBF kernel precomputed (see model_inputs)."""
    if candidate["model"] == "logistic_regression":
        return LogisticRegression(C=candidate["C"], max_iter=2000)
    return SVC(C=candidate["C"], kernel="precomputed")


def squared_distances(x: dict[str, np.ndarray], subset: np.ndarray) -> dict[str, np.ndarray]:
    """Each split's squared distances to the training images used, computed once for every gamma with BLAS:
    libsvm evaluating its RBF kernel itself, pair by pair, spent 5 s on each val pass of 2,000 images."""
    used = x["train"][subset].astype(np.float64)
    return {
        split: euclidean_distances(
            used if split == "train" else values.astype(np.float64), used, squared=True
        )
        for split, values in x.items()
    }


def model_inputs(
    candidate: dict, x: dict[str, np.ndarray], subset: np.ndarray, distances: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """What the candidate's model takes, per split: the pixels (training rows: those used), or for an SVM its
    kernel exp(-gamma * squared distance) against the training images used, which is what SVC(kernel="rbf")
    would compute."""
    if candidate["model"] == "logistic_regression":
        return {split: values[subset] if split == "train" else values for split, values in x.items()}
    gamma = candidate["gamma"] / x["train"].shape[1]
    return {split: np.exp(-gamma * squared) for split, squared in distances.items()}


def with_probabilities(model, labels: np.ndarray):
    """The model as the final fit needs it: an SVM gets Platt scaling fitted on its cross-validated decision
    values (one SVM on the images used; the folds, unshuffled, only calibrate). With a class of one image
    no fold split exists, and the SVM's probabilities are the softmax of its one-vs-rest decision values."""
    folds = min(5, int(np.bincount(labels)[np.unique(labels)].min()))
    if isinstance(model, LogisticRegression) or folds < 2:
        return model
    return CalibratedClassifierCV(model, method="sigmoid", cv=folds, ensemble=False)


def training_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most `limit` training images, each class in proportion (every class kept)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and limit >= np.count_nonzero(counts) else None
    chosen, _ = train_test_split(
        np.arange(len(labels)), train_size=limit, stratify=stratify, random_state=seed
    )
    return np.sort(chosen)


def choose(
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    subset: np.ndarray,
    distances: dict[str, np.ndarray],
    settings: Baseline,
) -> tuple[dict, list[dict]]:
    """(the best candidate on val, every candidate with its val accuracy), each trained on `subset`."""
    tried = []
    for candidate in candidates(settings):
        inputs = model_inputs(candidate, x, subset, distances)
        model = fit_quietly(build(candidate), inputs["train"], y["train"][subset])
        accuracy = float(np.mean(model.predict(inputs["val"]) == y["val"]))
        tried.append(candidate | {"val_accuracy": round(accuracy, 6)})
    best = max(tried, key=lambda c: c["val_accuracy"])  # max keeps the first of equals
    return {k: v for k, v in best.items() if k != "val_accuracy"}, tried


class PixelBaseline:
    def fit(
        self,
        settings: Baseline,
        background: list[int] | str,  # clean.background (images only)
        layout: Layout,
        manifest: pd.DataFrame,
        classes: list[str],
    ) -> tuple[dict[str, np.ndarray], dict]:
        """Log-probabilities on val and test of the candidate best on val, and what was chosen and tried."""
        x, y = {}, {}
        for split in ("train", *SCORED_SPLITS):
            rows = manifest[manifest["split"] == split]
            x[split] = pixel_features(rows, layout.resized_copies, settings.image_size, tuple(background))
            y[split] = rows["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()
        scaler = StandardScaler().fit(x["train"])
        x = {split: scaler.transform(values) for split, values in x.items()}
        subset = training_subset(y["train"], settings.max_train_images, settings.seed)
        distances = squared_distances(x, subset)
        best, tried = choose(x, y, subset, distances, settings)
        inputs = model_inputs(best, x, subset, distances)
        model = fit_quietly(
            with_probabilities(build(best), y["train"][subset]), inputs["train"], y["train"][subset]
        )
        scores = {split: log_probabilities(model, inputs[split], len(classes)) for split in SCORED_SPLITS}
        found = {
            "chosen": best,
            "image_size": settings.image_size,
            "features": x["train"].shape[1],
            "training_images_used": len(subset),
            "training_images": len(y["train"]),
            "val_accuracy": round(float(np.mean(scores["val"].argmax(axis=1) == y["val"])), 6),
            "candidates": tried,
        }
        return scores, found

    def describe(self, found: dict) -> str:
        chosen = found["chosen"]
        model = (
            f"an RBF SVM (C = {chosen['C']:g}, gamma = {chosen['gamma']:g} / {found['features']} features)"
            if chosen["model"] == "rbf_svm"
            else f"logistic regression (C = {chosen['C']:g})"
        )
        capped = (
            f", trained on a stratified {found['training_images_used']} of the {found['training_images']} "
            "training images (`baseline.max_train_images`)"
            if found["training_images_used"] < found["training_images"]
            else ""
        )
        return (
            f"{model} on the raw pixels ({found['image_size']}x{found['image_size']}, standardised), the best "
            f"on val of {len(found['candidates'])} candidates{capped}"
        )


BASELINE = PixelBaseline()
