"""evaluate: metrics, plots and a report for the no-transfer baseline, the head-only and the fine-tuned model
(and distill's students).

- `reports/metrics.json`: per model and split (val, test) accuracy with a bootstrap interval, balanced
  accuracy, macro/weighted F1, log loss, top-k accuracy, calibration error (and after temperature scaling).
- `reports/per_class.json`: per-class precision/recall/F1/support and the confusion matrix on test.
- `reports/predictions.csv`: one row per test image: every model's prediction and class probabilities.

With distill enabled, its students (distilled, label-only) are scored the same way after the three. Where
featurize embedded the class names (texts), zero-shot classification (`zeroshot`: the nearest class name by
cosine, reprotune/models/zero_shot.py) is scored beside them. The most confident mistakes are shown as the
modality shows an item (reprotune/modalities/showing.py): thumbnails of images, cards of texts.
- `reports/plots/*.png`, and `reports/report.md`: the stages' own sections (`reports/sections/`), placed by
  reprotune/reporting/report.py around evaluate's.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from scipy.special import softmax

from reprotune.modalities import encoding as modality_encoding
from reprotune.modalities import showing as modality_showing
from reprotune.modalities.encoding import Encoding
from reprotune.models.classifier import load_trained_classifier
from reprotune.models.inference import Inference
from reprotune.models.zero_shot import zero_shot_logits
from reprotune.pipeline import data_kind, stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_json, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.hashing import sha256_of_file
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.pipeline.params import Params
from reprotune.reporting import evaluation_plots as plots
from reprotune.reporting.metrics import (
    expected_calibration_error,
    fit_temperature,
    per_class_metrics,
    reliability,
    summary_metrics,
)
from reprotune.reporting.report import SECTIONS, render
from reprotune.training.devices import pick_device

log = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")
TRANSFER_MODELS = ("head", "finetune")


def head_logits(layout: Layout, split: str) -> np.ndarray:
    head = load_file(layout.head_weights)
    embeddings = load_file(layout.features_file(split))["embeddings"]
    return (embeddings @ head["weight"].T + head["bias"]).numpy()


def baseline_logits(layout: Layout, paths: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """The baseline's log-probabilities per split, which score as logits do (softmax gives the probabilities
    back), after checking they are for the same images in the same order."""
    recorded = read_json(layout.baseline_meta)["paths"]
    if any(recorded[split] != paths[split] for split in EVALUATED_SPLITS):
        raise InputError(f"{layout.baseline} and {layout.features_meta} disagree; run dvc repro")
    scores = load_file(layout.baseline_scores)
    return {split: scores[split].numpy() for split in EVALUATED_SPLITS}


def network_logits(
    params: Params,
    layout: Layout,
    encoding: Encoding,
    network: BackboneParams,
    weights: Path,
    paths: dict[str, list[str]],
    classes: list[str],
) -> dict:
    """A trained network's logits on val and test: the fine-tuned network, or one of distill's students."""
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    device = pick_device(params.finetune.device, "params.yaml: finetune.device")
    model, backbone = load_trained_classifier(network, weights, len(classes), load=encoding.architecture)
    model.to(device)
    if network.channels_last:
        model.to(memory_format=torch.channels_last)
    run = Inference(
        device,
        params.featurize.batch_size,
        params.featurize.num_workers,
        network.channels_last,
        bf16=device.type == "cuda",  # as finetune validated it
        background=params.clean.background,
    )
    logits = {}
    for split in EVALUATED_SPLITS:
        rows = manifest[manifest["split"] == split]
        if rows["path"].tolist() != paths[split]:
            raise InputError(f"{layout.split_manifest} and {layout.features_meta} disagree; run dvc repro")
        outputs = encoding.outputs(model, rows, backbone, run, layout, desc=f"evaluate {weights} on {split}")
        logits[split] = torch.cat(list(outputs)).numpy()
    return logits


def zero_shot(layout: Layout) -> dict[str, np.ndarray]:
    """Zero-shot logits per split, from featurize's embeddings of the texts and of the class names."""
    labels = load_file(layout.label_embeddings)["embeddings"]
    return {
        split: zero_shot_logits(load_file(layout.features_file(split))["embeddings"], labels).numpy()
        for split in EVALUATED_SPLITS
    }


def adapt_metrics(adapted: dict) -> dict:
    """adapt's numbers per model and variant (source_only, adapted): target test accuracy with its interval
    and macro-F1 when target labels exist, source test accuracy, the domain classifier's accuracy."""
    numbers = {}
    for model, variants in adapted["models"].items():
        for variant, record in variants.items():
            entry = {"source_test_accuracy": record["source_test"]["accuracy"]}
            if record["domain_accuracy"] is not None:
                entry["domain_accuracy"] = record["domain_accuracy"]
            if "target_test" in record:
                entry |= {
                    f"target_test_{k}": record["target_test"][k]
                    for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1")
                }
            numbers[f"{model}_{variant}"] = entry
    return numbers


def identity(layout: Layout, device: torch.device) -> dict[str, str]:
    """What report.md's numbers came from and ran on. The commit and date are the MLflow run's (track): here
    they would make the same result's report differ in bytes from one run to the next."""
    from importlib.metadata import version

    return {
        "data": sha256_of_file(layout.split_manifest)[:16],  # every file's hash, label and split
        "device": str(device),
        "versions": f"reprotune {version('reprotune')}, torch {torch.__version__}, timm {version('timm')}",
    }


def score(logits: dict, labels: dict, classes: list[str], params: Params) -> dict:
    """metrics.json's content for one model."""
    settings = params.evaluate
    result = {
        split: summary_metrics(
            logits[split],
            labels[split],
            len(classes),
            settings.top_k,
            settings.calibration_bins,
            settings.bootstrap_resamples,
            settings.seed,
        )
        for split in EVALUATED_SPLITS
    }
    if settings.temperature_scaling:
        temperature = fit_temperature(logits["val"], labels["val"])
        scaled = softmax(logits["test"] / temperature, axis=1)
        result["test"]["temperature"] = round(temperature, 6)
        result["test"]["ece_temperature_scaled"] = round(
            expected_calibration_error(scaled, labels["test"], settings.calibration_bins), 6
        )
    return result


def predictions_frame(
    paths: list[str], labels: np.ndarray, probabilities: dict, classes: list[str]
) -> pd.DataFrame:
    frame = pd.DataFrame({"path": paths, "actual": [classes[i] for i in labels]})
    for model in probabilities:
        frame[model] = [classes[i] for i in probabilities[model].argmax(axis=1)]
        frame[f"{model}_confidence"] = probabilities[model].max(axis=1).round(6)
    for model in probabilities:
        for index, name in enumerate(classes):
            frame[f"{model}_p:{name}"] = probabilities[model][:, index].round(6)
    return frame


def most_confident_mistakes(frame: pd.DataFrame, model: str, count: int) -> list[tuple[str, str, str, float]]:
    wrong = frame[frame[model] != frame["actual"]].sort_values(
        f"{model}_confidence", ascending=False, kind="stable"
    )
    return list(
        wrong[["path", "actual", model, f"{model}_confidence"]].head(count).itertuples(index=False, name=None)
    )


def shown_mistakes(
    frame: pd.DataFrame, shown: pd.Series, count: int
) -> dict[str, list[tuple[str, str, str, float]]]:
    """Each transfer model's most confident mistakes on test as (the item as shown, true, predicted,
    confidence); `shown` maps a path to what shows its item (reprotune/modalities/showing.py)."""
    return {
        model: [(shown[path], *rest) for path, *rest in most_confident_mistakes(frame, model, count)]
        for model in TRANSFER_MODELS
    }


def draw(
    layout: Layout, params: Params, probabilities, per_class, metrics, classes, labels, mistakes, showing
) -> None:
    """The plots; `mistakes` as shown_mistakes gives them, drawn as the modality shows items."""
    bins = params.evaluate.calibration_bins
    for model in TRANSFER_MODELS:  # the baseline is in the tables, calibration and per-class plots
        plots.confusion(
            per_class[model]["confusion_matrix"],
            classes,
            f"{model} (test)",
            layout.plots / f"confusion_{model}.png",
        )
        plots.precision_recall(
            labels, probabilities[model], classes, f"{model} (test)", layout.plots / f"pr_{model}.png"
        )
        title = f"{model}: most confident mistakes (test)"
        showing.figure(
            plots.mistake_captions(mistakes[model]),
            params.clean.background,
            title if mistakes[model] else f"{title}: no mistakes",
            layout.plots / f"mistakes_{model}.png",
        )
    plots.reliability_diagram(
        {model: reliability(probabilities[model], labels, bins) for model in probabilities},
        {model: metrics[model]["test"]["ece"] for model in probabilities},
        layout.plots / "reliability.png",
    )
    plots.per_class_f1(
        classes,
        {model: [per_class[model]["classes"][c]["f1"] for c in classes] for model in probabilities},
        layout.plots / "per_class_f1.png",
    )
    with layout.finetune_history.open(newline="") as stream:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(stream)]
    plots.training_curves(history, layout.plots / "training_curves.png")


def evaluate(params: Params) -> None:
    layout = Layout(params.paths)
    kind = data_kind.read(layout.data_kind)
    encoding = modality_encoding.of(kind.modality)
    meta = read_json(layout.features_meta)
    classes, paths = meta["classes"], meta["paths"]
    labels = {split: load_file(layout.features_file(split))["labels"].numpy() for split in EVALUATED_SPLITS}
    logits = {
        "baseline": baseline_logits(layout, paths),
        "head": {split: head_logits(layout, split) for split in EVALUATED_SPLITS},
        "finetune": network_logits(
            params, layout, encoding, params.backbone, layout.finetuned_weights, paths, classes
        ),
    }
    if "label_prompts" in meta:  # featurize embedded the class names: zero-shot is one more model
        logits["zeroshot"] = zero_shot(layout)
    distilled = read_json(layout.distill_meta)
    if distilled["enabled"]:
        student = BackboneParams(**distilled["student"]["registry"])
        for name in distilled["students"]:
            logits[name] = network_logits(
                params, layout, encoding, student, layout.student_weights(name), paths, classes
            )
    metrics = {model: score(logits[model], labels, classes, params) for model in logits}
    probabilities = {model: softmax(logits[model]["test"], axis=1) for model in logits}
    per_class = {
        model: per_class_metrics(labels["test"], probabilities[model].argmax(axis=1), classes)
        for model in logits
    }
    frame = predictions_frame(paths["test"], labels["test"], probabilities, classes)
    showing = modality_showing.of(kind.modality)
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    shown = pd.Series(manifest[showing.column].to_numpy(), index=manifest["path"])  # path -> what shows it
    if showing.column not in frame.columns:  # e.g. the text beside its path: predictions.csv reads on its own
        frame.insert(1, showing.column, shown.loc[frame["path"]].to_numpy())
    with atomic_output(layout.predictions) as temporary:
        frame.to_csv(temporary, index=False)
    mistakes = shown_mistakes(frame, shown, params.evaluate.gallery_size)
    draw(layout, params, probabilities, per_class, metrics, classes, labels["test"], mistakes, showing)
    adapted = read_json(layout.adapt_report)
    write_json(layout.per_class, per_class)
    # adapt's figures join metrics.json only when it ran, so that `adapt.method: none` changes no byte here
    write_json(
        layout.metrics, metrics | ({"adapt": adapt_metrics(adapted)} if adapted["method"] != "none" else {})
    )
    report = render(
        params,
        metrics,
        per_class,
        {stage: layout.report_section(stage).read_text(encoding="utf-8") for stage in SECTIONS},
        distilled,
        read_json(layout.latency),
        kind,
        mistakes,
        showing.column,
        identity(layout, pick_device(params.finetune.device, "params.yaml: finetune.device")),
        {
            split: {
                name: int(((manifest["split"] == split) & (manifest["label"] == name)).sum())
                for name in classes
            }
            for split in ("train", "val", "test")
        },
    )
    write_text(layout.report, report)
    for model in metrics:
        log.info("%s test: %s", model, metrics[model]["test"])


def main() -> None:
    stage.run(evaluate)


if __name__ == "__main__":
    main()
