"""baseline: how well a model that transfers nothing does on the same split, the bar transfer has to clear.

Every kept image is shrunk to `baseline.image_size` squared (area averaging, after the same decoding as every
other stage; large images are read from clean's resized copy, the same picture), each pixel standardised on
the training split. Candidates: logistic regression for each `baseline.C`, and an RBF SVM for each C and
gamma (in multiples of 1 / features, so the grid means the same at any image size). Each is fitted on at
most `baseline.search_images` training images and scored on val; the best on val (ties: the first, so
logistic regression before the SVM, small C before large) is fitted on every training image, with
probabilities (for the SVM, Platt scaling on cross-validated decision values). Test is
never looked at here.

Writes `scores.safetensors` (log-probabilities on val and test, which evaluate scores like the other models'
logits) and `baseline.json` (the choice and every candidate's val accuracy).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import save_file
from scipy.special import expit, softmax
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from reprotune import stage
from reprotune.images import Background, load_rgb
from reprotune.layout import Layout, atomic_output
from reprotune.params import Baseline, Params
from reprotune.resized import NO_COPY, ResizedCopies

log = logging.getLogger(__name__)

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


def build(candidate: dict, features: int):
    if candidate["model"] == "logistic_regression":
        return LogisticRegression(C=candidate["C"], max_iter=2000)
    return SVC(C=candidate["C"], gamma=candidate["gamma"] / features)


def with_probabilities(model, labels: np.ndarray):
    """The model as the final fit needs it: an SVM gets Platt scaling fitted on its cross-validated decision
    values (one SVM on all the images; the folds, unshuffled, only calibrate). With a class of one image
    no fold split exists, and the SVM's probabilities are the softmax of its one-vs-rest decision values."""
    folds = min(5, int(np.bincount(labels)[np.unique(labels)].min()))
    if isinstance(model, LogisticRegression) or folds < 2:
        return model
    return CalibratedClassifierCV(model, method="sigmoid", cv=folds, ensemble=False)


def search_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most `limit` training images, each class in proportion (every class kept)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and limit >= np.count_nonzero(counts) else None
    chosen, _ = train_test_split(
        np.arange(len(labels)), train_size=limit, stratify=stratify, random_state=seed
    )
    return np.sort(chosen)


def fit_quietly(model, x: np.ndarray, y: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a slow candidate still gets its val score
        return model.fit(x, y)


def choose(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], settings: Baseline
) -> tuple[dict, list[dict], np.ndarray]:
    """(the best candidate on val, every candidate with its val accuracy, the search's training indices)."""
    subset = search_subset(y["train"], settings.search_images, settings.seed)
    tried = []
    for candidate in candidates(settings):
        model = build(candidate, x["train"].shape[1])
        fit_quietly(model, x["train"][subset], y["train"][subset])
        accuracy = float(np.mean(model.predict(x["val"]) == y["val"]))
        tried.append(candidate | {"val_accuracy": round(accuracy, 6)})
    best = max(tried, key=lambda c: c["val_accuracy"])  # max keeps the first of equals
    return {k: v for k, v in best.items() if k != "val_accuracy"}, tried, subset


def log_probabilities(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Log-probabilities over every class (a class the model never saw gets log 0 = -inf's stand-in)."""
    probabilities = np.full((len(x), num_classes), 1e-12)
    if hasattr(model, "predict_proba"):
        seen = model.predict_proba(x)
    else:  # an SVM that could not be calibrated (see with_probabilities)
        scores = model.decision_function(x)
        positive = expit(scores)[:, None] if scores.ndim == 1 else None  # two classes: one score
        seen = np.hstack([1 - positive, positive]) if positive is not None else softmax(scores, axis=1)
    probabilities[:, model.classes_] = np.maximum(seen, 1e-12)
    return np.log(probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


def baseline(params: Params) -> None:
    settings = params.baseline
    layout = Layout(params.paths)
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    classes = sorted(manifest["label"].unique())  # as featurize numbers them, and in its row order below
    x, y = {}, {}
    for split in ("train", *SCORED_SPLITS):
        rows = manifest[manifest["split"] == split]
        x[split] = pixel_features(
            rows, layout.resized_copies, settings.image_size, tuple(params.clean.background)
        )
        y[split] = rows["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()
    scaler = StandardScaler().fit(x["train"])
    x = {split: scaler.transform(values) for split, values in x.items()}
    best, tried, subset = choose(x, y, settings)
    features = x["train"].shape[1]
    model = fit_quietly(with_probabilities(build(best, features), y["train"]), x["train"], y["train"])
    scores = {split: log_probabilities(model, x[split], len(classes)) for split in SCORED_SPLITS}
    summary = {
        "classes": classes,
        "paths": {
            split: manifest.loc[manifest["split"] == split, "path"].tolist() for split in SCORED_SPLITS
        },
        "chosen": best,
        "image_size": settings.image_size,
        "features": features,
        "search_images": len(subset),
        "train_images": len(y["train"]),
        "val_accuracy": round(float(np.mean(scores["val"].argmax(axis=1) == y["val"])), 6),
        "candidates": tried,
    }
    with atomic_output(layout.baseline) as staging:
        staging.mkdir()
        save_file({s: torch.from_numpy(v) for s, v in scores.items()}, staging / layout.baseline_scores.name)
        (staging / layout.baseline_meta.name).write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
    log.info(
        "baseline: %s chosen on val (accuracy %.4f) of %d candidates",
        best,
        summary["val_accuracy"],
        len(tried),
    )


def main() -> None:
    stage.run(baseline)


if __name__ == "__main__":
    main()
