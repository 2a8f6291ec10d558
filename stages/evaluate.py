"""evaluate: test-set metrics for the head-only and the fine-tuned model, with plots.

Writes `reports/metrics.json` (nested; DVC flattens it), per-class precision/recall/F1 and confusion
matrices in `reports/per_class.json`, per-image predictions for `dvc plots` (confusion template), and
PNG confusion matrices for people and MLflow.
"""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")  # no display on CI machines; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
)

from reprotune import stage
from reprotune.backbones import Classifier, load_backbone, pick_device
from reprotune.datasets import ManifestImages, make_loader, worker_count
from reprotune.layout import MODELS, Layout, atomic_output, read_json, write_json
from reprotune.params import Params
from stages.finetune import predict

log = logging.getLogger(__name__)


def metrics(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> tuple[dict, dict]:
    """(summary metrics, per-class report with the confusion matrix)."""
    indices = list(range(len(classes)))
    summary = {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)), 6
        ),
        "weighted_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="weighted", zero_division=0)), 6
        ),
        "n": int(len(labels)),
    }
    report = classification_report(
        labels, predicted, labels=indices, target_names=classes, output_dict=True, zero_division=0
    )
    per_class = {name: {k: round(float(v), 6) for k, v in report[name].items()} for name in classes}
    per_class["confusion_matrix"] = confusion_matrix(labels, predicted, labels=indices).tolist()
    return summary, per_class


def head_probabilities(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    head = load_file(layout.head_weights)
    test = load_file(layout.features_file("test"))
    logits = test["embeddings"] @ head["weight"].T + head["bias"]
    return torch.softmax(logits, dim=1).numpy(), test["labels"].numpy()


def finetuned_probabilities(
    params: Params, layout: Layout, paths: list[str], labels: np.ndarray, classes: list[str]
):
    device = pick_device(params.finetune.device)
    backbone = load_backbone(params.backbone)
    model = Classifier(backbone.model, backbone.num_features, len(classes))
    model.load_state_dict(load_file(layout.finetuned_weights))
    model.to(device)
    if params.backbone.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = ManifestImages(
        paths, labels.tolist(), backbone.data.eval_transform(), tuple(params.clean.background)
    )
    loader = make_loader(dataset, params.featurize.batch_size, worker_count(params.featurize.num_workers))
    return torch.softmax(predict(model, loader, device, params.backbone.channels_last), dim=1).numpy()


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str, path) -> None:
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=classes).plot(
        ax=axes, cmap="Blues", colorbar=False, xticks_rotation=90 if len(classes) > 10 else 0
    )
    axes.set_title(title)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    plt.close(figure)


def evaluate(params: Params) -> None:
    layout = Layout(params.paths)
    meta = read_json(layout.features_meta)
    classes, paths = meta["classes"], meta["paths"]["test"]
    head_probs, labels = head_probabilities(layout)
    probabilities = {
        "head": head_probs,
        "finetune": finetuned_probabilities(params, layout, paths, labels, classes),
    }
    results, per_class = {}, {}
    for model in MODELS:
        predicted = probabilities[model].argmax(axis=1)
        summary, per_class[model] = metrics(labels, predicted, classes)
        results[model] = {"test": summary}
        log.info("%s test: %s", model, summary)
        frame = pd.DataFrame(
            {
                "path": paths,
                "actual": [classes[i] for i in labels],
                "predicted": [classes[i] for i in predicted],
                "confidence": probabilities[model].max(axis=1).round(6),
            }
        )
        with atomic_output(layout.predictions_file(model)) as temporary:
            frame.to_csv(temporary, index=False)
        plot_confusion(
            per_class[model]["confusion_matrix"],
            classes,
            f"{model} (test): accuracy {summary['accuracy']:.3f}",
            layout.plots / f"confusion_{model}.png",
        )
    write_json(layout.per_class, per_class)
    write_json(layout.metrics, results)


def main() -> None:
    stage.run(evaluate)


if __name__ == "__main__":
    main()
