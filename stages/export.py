"""export: the fine-tuned network for use outside PyTorch, as ONNX (float32) and int8, with a model card; with
distill enabled, the distilled student the same way in `student/` inside the export folder.

- `model.onnx`: fixed image size, dynamic batch. Accepted only after a check against torch on the whole test
  split: every top-1 prediction the same and no logit more than `export.max_logit_difference` apart. The
  dynamo exporter is tried first; when it fails or fails the check, the TorchScript one; when that fails the
  check too, the stage stops, naming the exporter and the figures.
- `model.int8.onnx`: ONNX Runtime post-training static quantization (QDQ, per-channel int8 weights, uint8
  activations), calibrated on `export.calibration_images` training images chosen by `export.seed`.
- `model.json`: what a user of the files needs: class names, preprocessing, and the temperature evaluate
  fitted on validation (divide the logits by it before the softmax for calibrated probabilities).
- `reports/export.json` (for `dvc metrics`) and `reports/export.md`: torch float32, ONNX float32 and ONNX
  int8 side by side on the test split: accuracy with its bootstrap interval, macro-F1, top-1 agreement with
  torch, largest logit difference, file size. Latency varies run to run, and outputs must be the same bytes
  for the same inputs, so it is measured by `python -m benchmarks.bench_export`, not here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from reprotune.data.dataconfig import DataConfig
from reprotune.data.datasets import eval_images, make_loader
from reprotune.modalities import exporting
from reprotune.models.classifier import Classifier, load_trained_classifier
from reprotune.models.inference import predict
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_json, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.pipeline.params import Params
from reprotune.reporting.metrics import summary_metrics
from reprotune.reporting.progress import progress
from reprotune.serving.onnx_models import OnnxClassifier

log = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")


def to_onnx(model: Classifier, example: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    """`model` as ONNX at `path`: input `images` (batch, 3, side, side), output `logits`, any batch size."""
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=65_536)
        options: dict = {"dynamo": True, "dynamic_shapes": ({0: batch},), "external_data": False}
    else:
        options = {"dynamo": False, "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        opset_version=opset,
        **options,
    )


def without_provenance(path: Path) -> None:
    """Drop what the exporter records about where each node came from (source file paths and stack traces,
    in node metadata and doc strings): the same model must give the same bytes from any checkout folder."""
    import onnx

    model = onnx.load(str(path))

    def strip(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    strip(attribute.g)
                for subgraph in attribute.graphs:
                    strip(subgraph)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            del value.metadata_props[:]
            value.doc_string = ""

    strip(model.graph)
    model.doc_string = ""
    del model.metadata_props[:]
    onnx.save(model, str(path))


def compare(reference: np.ndarray, logits: np.ndarray) -> dict:
    return {
        "top1_agreement": round(float((reference.argmax(1) == logits.argmax(1)).mean()), 6),
        "max_logit_difference": round(float(np.abs(reference - logits).max()), 6),
    }


def export_checked(
    model: Classifier, test: DataLoader, reference: np.ndarray, path: Path, params: Params
) -> tuple[str, dict, np.ndarray]:
    """Export with the first exporter whose file agrees with torch on every test image; return its name, the
    check's figures and the file's test logits."""
    settings = params.export
    failures = []
    for exporter in EXPORTERS:
        try:
            to_onnx(model, next(iter(test))[0][:1], path, settings.opset, exporter)
            without_provenance(path)
            logits = OnnxClassifier(path).logits_of(
                images for images, _ in progress(test, f"export: check {path.name}", unit="batch")
            )
            check = compare(reference, logits)
        except Exception as error:  # noqa: BLE001 - exporters fail in many ways; the next one is tried
            failures.append(f"{exporter}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            log.warning("ONNX export with the %s exporter failed: %s", exporter, failures[-1])
            continue
        if check["top1_agreement"] == 1.0 and check["max_logit_difference"] <= settings.max_logit_difference:
            log.info("ONNX export (%s exporter) agrees with torch: %s", exporter, check)
            return exporter, check, logits
        failures.append(f"{exporter}: {check}")
        log.warning("the %s exporter's ONNX disagrees with torch: %s", exporter, check)
    raise InputError(
        "ONNX export failed its check against torch on the test split (every top-1 the same, logits within "
        f"export.max_logit_difference={settings.max_logit_difference}): " + "; ".join(failures)
    )


def quantize(fp32: Path, int8: Path, calibration: DataLoader) -> None:
    """Static int8 quantization (QDQ, per-channel weights) with ONNX Runtime, after its own pre-processing
    (shape inference and graph optimisation), which its documentation asks for."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        """The calibration images, a batch at a time, as ONNX Runtime asks for them."""

        def __init__(self) -> None:
            self.batches = (images for images, _ in calibration)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    prepared = int8.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(int8),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()


def image_loader(params: Params, layout: Layout, rows: pd.DataFrame, data: DataConfig) -> DataLoader:
    """The rows' images through the eval transform, in order, a batch at a time: read again on each pass, so
    memory does not grow with the test split."""
    dataset = eval_images(rows, [0] * len(rows), data, tuple(params.clean.background), layout.resized_copies)
    return make_loader(dataset, params.featurize.batch_size, 0)


def scored(logits: np.ndarray, labels: np.ndarray, num_classes: int, params: Params) -> dict:
    settings = params.evaluate
    metrics = summary_metrics(
        logits,
        labels,
        num_classes,
        settings.top_k,
        settings.calibration_bins,
        settings.bootstrap_resamples,
        settings.seed,
    )
    return {k: metrics[k] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1")}


def table(comparison: dict) -> str:
    lines = [
        "# Exported models",
        "",
        "The fine-tuned network (and, with distill on, the distilled student: `student_*`, in `student/`) as "
        "exported, on the test split. Latency: `python -m benchmarks.bench_export`.",
        "",
        "| model | accuracy [95% interval] | macro-F1 | top-1 agreement with torch | max logit difference | file size |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in comparison.items():
        lines.append(
            f"| {name} | {row['accuracy']:.4f} [{row['accuracy_ci_low']:.4f}, {row['accuracy_ci_high']:.4f}] "
            f"| {row['macro_f1']:.4f} | {row['top1_agreement']:.4f} | {row['max_logit_difference']:.2e} "
            f"| {row['megabytes']:.2f} MB |"
        )
    return "\n".join(lines) + "\n"


def export_network(
    params: Params,
    model: Classifier,
    data: DataConfig,
    backbone_name: str,
    weights: Path,
    temperature: float,
    folder: Path,
    layout: Layout,
) -> dict:
    """One trained network into `folder` (ONNX float32 checked against torch, int8, the card); its rows of
    the comparison on the test split (torch float32, ONNX float32, ONNX int8)."""
    settings = params.export
    classes = read_json(layout.features_meta)["classes"]
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    index = {label: i for i, label in enumerate(classes)}
    test = manifest[manifest["split"] == "test"]
    labels = np.array([index[label] for label in test["label"]])
    test_images = image_loader(params, layout, test, data)
    reference = predict(model, test_images, torch.device("cpu"), False, desc="export: torch on test").numpy()
    train = manifest[manifest["split"] == "train"]
    chosen = train.sample(min(settings.calibration_images, len(train)), random_state=settings.seed)
    calibration = image_loader(params, layout, chosen, data)

    folder.mkdir()
    fp32, int8 = folder / layout.onnx_model.name, folder / layout.int8_model.name
    exporter, check, onnx_logits = export_checked(model, test_images, reference, fp32, params)
    quantize(fp32, int8, calibration)
    card = {
        "classes": classes,
        "backbone": backbone_name,
        "input": {"name": "images", "shape": ["batch", 3, data.input_size, data.input_size]},
        "preprocessing": data.__dict__ | {"resize_side": data.eval_decode_side},
        "checks": params.clean.model_dump(mode="json"),
        "temperature": temperature,
        "exporter": exporter,
        "opset": settings.opset,
    }
    (folder / layout.model_card.name).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    quantized = OnnxClassifier(int8).logits_of(
        images for images, _ in progress(test_images, "export: int8 on test", unit="batch")
    )
    return {
        "torch_fp32": scored(reference, labels, len(classes), params)
        | compare(reference, reference)
        | {"megabytes": round(weights.stat().st_size / 2**20, 3)},
        "onnx_fp32": scored(onnx_logits, labels, len(classes), params)
        | check
        | {"megabytes": round(fp32.stat().st_size / 2**20, 3)},
        "onnx_int8": scored(quantized, labels, len(classes), params)
        | compare(reference, quantized)
        | {"megabytes": round(int8.stat().st_size / 2**20, 3)},
    }


def export(params: Params) -> None:
    layout = Layout(params.paths)
    reason = exporting.not_exported(layout.modality)
    if reason is not None:
        with atomic_output(layout.exported) as staging:
            staging.mkdir()
            (staging / "README.md").write_text(reason, encoding="utf-8")
        write_json(layout.export_report, {"onnx_exported": False})
        write_text(layout.export_summary, "# Export\n\n" + reason)
        log.info("%s", reason.strip())
        return
    classes = read_json(layout.features_meta)["classes"]
    metrics = read_json(layout.metrics)
    distilled = read_json(layout.distill_meta)
    with atomic_output(layout.exported) as staging:
        model, backbone = load_trained_classifier(params.backbone, layout.finetuned_weights, len(classes))
        comparison = export_network(
            params,
            model,
            backbone.data,
            params.backbone.name,
            layout.finetuned_weights,
            metrics["finetune"]["test"].get("temperature", 1.0),
            staging,
            layout,
        )
        if distilled["enabled"]:  # the distilled student too, beside the fine-tuned network's files
            student = BackboneParams(**distilled["student"]["registry"])
            weights = layout.student_weights("distilled")
            model, backbone = load_trained_classifier(student, weights, len(classes))
            rows = export_network(
                params,
                model,
                backbone.data,
                student.name,
                weights,
                metrics["distilled"]["test"].get("temperature", 1.0),
                staging / layout.student_export.name,
                layout,
            )
            comparison |= {f"student_{name}": row for name, row in rows.items()}
    write_json(layout.export_report, comparison)
    write_text(layout.export_summary, table(comparison))
    for name, row in comparison.items():
        log.info("%s: %s", name, row)


def main() -> None:
    stage.run(export)


if __name__ == "__main__":
    main()
