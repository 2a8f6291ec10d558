"""The no-transfer baseline on texts, the classic one: TF-IDF of word unigrams and bigrams (sublinear term
frequency, fitted on the training texts) with logistic regression for each `baseline.C`, the best on val."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from reprotune.models.sklearn_fitting import fit_quietly, log_probabilities
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Baseline

SCORED_SPLITS = ("val", "test")


def text_features(manifest: pd.DataFrame) -> tuple[dict, int]:
    """TF-IDF of each split's texts, the vocabulary and weights fitted on train; and the vocabulary's size."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)
    texts = {
        split: manifest.loc[manifest["split"] == split, "text"].tolist()
        for split in ("train", *SCORED_SPLITS)
    }
    x = {"train": vectorizer.fit_transform(texts["train"])}
    x |= {split: vectorizer.transform(texts[split]) for split in SCORED_SPLITS}
    return x, len(vectorizer.vocabulary_)


def text_baseline(settings: Baseline, manifest: pd.DataFrame, classes: list[str]) -> tuple[dict, dict]:
    """The TF-IDF + logistic regression baseline: its scores on val and test and its summary."""
    x, vocabulary = text_features(manifest)
    index = {name: i for i, name in enumerate(classes)}
    y = {split: manifest.loc[manifest["split"] == split, "label"].map(index).to_numpy() for split in x}
    tried = []
    for C in settings.C:
        model = fit_quietly(LogisticRegression(C=C, max_iter=2000), x["train"], y["train"])
        tried.append(
            {
                "model": "tfidf_logistic_regression",
                "C": C,
                "val_accuracy": round(float(np.mean(model.predict(x["val"]) == y["val"])), 6),
            }
        )
    best = max(tried, key=lambda c: c["val_accuracy"])
    model = fit_quietly(LogisticRegression(C=best["C"], max_iter=2000), x["train"], y["train"])
    scores = {split: log_probabilities(model, x[split], len(classes)) for split in SCORED_SPLITS}
    summary = {
        "chosen": {k: v for k, v in best.items() if k != "val_accuracy"},
        "features": vocabulary,
        "training_images_used": len(y["train"]),
        "training_images": len(y["train"]),
        "val_accuracy": round(float(np.mean(scores["val"].argmax(axis=1) == y["val"])), 6),
        "candidates": tried,
    }
    return scores, summary


class TfidfBaseline:
    def fit(
        self,
        settings: Baseline,
        background: list[int] | str,  # clean.background (images only)
        layout: Layout,
        manifest: pd.DataFrame,
        classes: list[str],
    ) -> tuple[dict[str, np.ndarray], dict]:
        """As the image baseline's; `background` and the layout play no part in a text's features."""
        return text_baseline(settings, manifest, classes)

    def describe(self, found: dict) -> str:
        return (
            f"logistic regression (C = {found['chosen']['C']:g}) on TF-IDF of word unigrams and bigrams "
            f"({found['features']} terms from the training texts), the best on val of "
            f"{len(found['candidates'])} candidates"
        )


BASELINE = TfidfBaseline()
