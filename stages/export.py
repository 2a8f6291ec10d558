"""export: the fine-tuned network for use outside PyTorch, as ONNX (float32) and int8, with a model card; with
distill enabled, the distilled student the same way in `student/` inside the export folder. Images and texts
alike: what differs (the graph's input, a tokenizer's files, how int8 is made) comes from the modality
(reprotune/modalities/exporting.py).

- `model.onnx`: dynamic batch (and, for texts, token count). Accepted only after a check against torch on the
  whole test split: every top-1 prediction the same and no logit more than `export.max_logit_difference`
  apart. The dynamo exporter is tried first; when it fails or fails the check, the TorchScript one; when
  that fails the check too, the stage stops, naming the exporter and the figures.
- `model.int8.onnx`: images by static quantization (QDQ, per-channel weights, uint8 activations, calibrated
  on `export.calibration_images` training images chosen by `export.seed`); texts by dynamic quantization.
  Checked like the float file: the first of the modality's int8 settings whose top-1 agreement with torch on
  val reaches `export.min_int8_agreement` is kept, and shipped only if its agreement on the test split does
  too; otherwise no int8 file ships, and the card and export.md say why (never a silently degraded one).
  With it, `int8_check.npz`: a sample of val inputs with torch's and the int8 file's logits, on which
  predict and the served model check the int8 file once per machine (reprotune/serving/int8_check.py).
- `model.json`: what a user of the files needs: modality, class names, preprocessing (for texts, the
  tokenizer's files in `tokenizer/`), the temperature evaluate fitted on validation (divide the logits by it
  before the softmax for calibrated probabilities), and the int8 decision.
- `reports/export.json` (for `dvc metrics`) and `reports/export.md`: torch float32, ONNX float32 and ONNX
  int8 side by side on the test split: accuracy with its bootstrap interval, macro-F1, top-1 agreement with
  torch, largest logit difference, file size. Latency varies run to run, and outputs must be the same bytes
  for the same inputs, so it is measured by `python -m benchmarks.bench_export`, not here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from reprotune.modalities import encoding as modality_encoding
from reprotune.modalities import exporting as modality_exporting
from reprotune.modalities.exporting import Exporting
from reprotune.models.classifier import Classifier, load_trained_classifier
from reprotune.models.inference import predict
from reprotune.models.model_card import card_checks
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_json, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.input_checks import input_checks
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.pipeline.params import Params
from reprotune.reporting.metrics import summary_metrics
from reprotune.reporting.progress import progress
from reprotune.serving import int8_check
from reprotune.serving.onnx_models import OnnxClassifier

log = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
MAX_DIMENSION = 65_536  # the most a dynamic axis (batch, tokens) is declared to take


def to_onnx(
    model: Classifier, example: torch.Tensor, path: Path, opset: int, exporter: str, io: Exporting
) -> None:
    """`model` as ONNX at `path`: input `io.input_name`, output `logits`, the input's `io.dynamic_axes` of any
    size."""
    if exporter == "dynamo":
        dims = {
            axis: torch.export.Dim(name, min=1, max=MAX_DIMENSION) for axis, name in io.dynamic_axes.items()
        }
        options: dict = {"dynamo": True, "dynamic_shapes": (dims,), "external_data": False}
    else:
        options = {"dynamo": False, "dynamic_axes": {io.input_name: io.dynamic_axes, "logits": {0: "batch"}}}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[io.input_name],
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


def onnx_logits(path: Path, loader: DataLoader, desc: str) -> np.ndarray:
    """The file's logits over the loader, in the loader's order."""
    return OnnxClassifier(path).logits_of(batch for batch, _ in progress(loader, desc, unit="batch"))


def export_checked(
    model: Classifier, test: DataLoader, reference: np.ndarray, path: Path, params: Params, io: Exporting
) -> tuple[str, dict, np.ndarray]:
    """Export with the first exporter whose file agrees with torch on every test input; return its name, the
    check's figures and the file's test logits (in the loader's order)."""
    settings = params.export
    failures = []
    for exporter in EXPORTERS:
        try:
            to_onnx(model, next(iter(test))[0][:1], path, settings.opset, exporter, io)
            without_provenance(path)
            logits = onnx_logits(path, test, f"export: check {path.name}")
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


def quantized_checked(
    fp32: Path,
    int8: Path,
    calibration: DataLoader | None,
    checks: dict[str, tuple[DataLoader, np.ndarray]],
    minimum: float,
    io: Exporting,
) -> tuple[dict, np.ndarray | None]:
    """An int8 file checked as the float one is: each of the modality's settings in turn until one agrees
    with torch's top-1 on at least `minimum` of the validation inputs (`checks["val"]`: loader and torch's
    logits); that one is shipped only if it agrees as well on the test split. Returns the decision (for the
    card and the report) and the shipped file's test logits, or None with no file left at `int8`."""

    def agreement(split: str) -> tuple[float, np.ndarray]:
        loader, reference = checks[split]
        logits = onnx_logits(int8, loader, f"export: int8 on {split}")
        return compare(reference, logits)["top1_agreement"], logits

    tried: dict[str, float] = {}
    for setting in io.int8_settings:
        io.quantize(fp32, int8, calibration, setting)
        tried[setting], _ = agreement("val")
        log.info("int8 %s: top-1 agreement with torch on val %.4f", setting, tried[setting])
        if tried[setting] >= minimum:
            test_agreement, logits = agreement("test")
            decision = {
                "setting": setting,
                "val_top1_agreement": tried,
                "test_top1_agreement": test_agreement,
            }
            if test_agreement >= minimum:
                return decision | {"shipped": True, "why": ""}, logits
            int8.unlink()
            why = (
                f"int8 ({setting}) agreed with torch on {tried[setting]:.4f} of val but {test_agreement:.4f} "
                f"of test, below export.min_int8_agreement={minimum}"
            )
            log.warning("no int8 file: %s", why)
            return decision | {"shipped": False, "why": why}, None
    int8.unlink()
    why = (
        "no int8 setting agreed with torch on export.min_int8_agreement="
        f"{minimum} of val (" + ", ".join(f"{k} {v:.4f}" for k, v in tried.items()) + ")"
    )
    log.warning("no int8 file: %s", why)
    return {"setting": None, "val_top1_agreement": tried, "shipped": False, "why": why}, None


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


def int8_record(decisions: dict[str, dict]) -> dict:
    """export.json's numbers about int8 (MLflow metrics: numbers only): shipped or not, and each setting's
    agreement with torch on val; the chosen setting's name and the reason are in the card and export.md."""
    return {
        name: {"shipped": decision["shipped"], "val_top1_agreement": decision["val_top1_agreement"]}
        for name, decision in decisions.items()
    }


def table(comparison: dict, decisions: dict[str, dict], minimum: float) -> str:
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
    lines.append("")
    for name, decision in decisions.items():
        tried = ", ".join(f"`{k}` {v:.4f}" for k, v in decision["val_top1_agreement"].items())
        if decision["shipped"]:
            lines.append(
                f"- {name}: setting `{decision['setting']}`, the first whose top-1 agreement with torch on val "
                f"reached export.min_int8_agreement={minimum} (tried: {tried}); on test "
                f"{decision['test_top1_agreement']:.4f}."
            )
        else:
            lines.append(f"- **{name}: no int8 file ships**: {decision['why']}. Use the float32 file.")
    lines.append(
        "- int8 kernels differ between CPUs (VNNI or not); the agreement above holds for the CPU that ran "
        "export. `reprotune predict` and the served model check the int8 file once on each machine against "
        "`int8_check.npz` and use the float32 file where it no longer agrees; "
        "`python -m benchmarks.bench_export` measures agreement and speed on yours."
    )
    return "\n".join(lines) + "\n"


def export_network(
    params: Params,
    layout: Layout,
    model: Classifier,
    data: Any,
    network: BackboneParams,
    weights: Path,
    temperature: float,
    folder: Path,
) -> tuple[dict, dict]:
    """One trained network into `folder` (ONNX float32 checked against torch, int8 where it holds, the card);
    its rows of the comparison on the test split (torch float32, ONNX float32, ONNX int8 if shipped), and the
    int8 decision."""
    settings = params.export
    io = modality_exporting.of(layout.modality)
    classes = read_json(layout.features_meta)["classes"]
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    index = {label: i for i, label in enumerate(classes)}
    test_rows, val_rows = manifest[manifest["split"] == "test"], manifest[manifest["split"] == "val"]
    test, test_order = io.inputs(params, layout, test_rows, data)
    labels = np.array([index[label] for label in test_rows["label"]])[test_order]  # in the loader's order
    reference = predict(model, test, torch.device("cpu"), False, desc="export: torch on test").numpy()
    val, _ = io.inputs(params, layout, val_rows, data)
    val_reference = predict(model, val, torch.device("cpu"), False, desc="export: torch on val").numpy()
    chosen = io.calibration_rows(params, manifest[manifest["split"] == "train"])
    calibration = None if chosen is None else io.inputs(params, layout, chosen, data)[0]

    folder.mkdir()
    fp32, int8 = folder / layout.onnx_model.name, folder / layout.int8_model.name
    exporter, check, onnx_test = export_checked(model, test, reference, fp32, params, io)
    int8_decision, quantized = quantized_checked(
        fp32,
        int8,
        calibration,
        {"val": (val, val_reference), "test": (test, reference)},
        settings.min_int8_agreement,
        io,
    )
    if int8_decision["shipped"]:  # the sample predict and the served model check int8 on, on each machine
        sample = val_rows.sample(min(int8_check.SAMPLE_ROWS, len(val_rows)), random_state=settings.seed)
        loader, _ = io.inputs(params, layout, sample, data)
        batches = [int8_check.as_stored(batch.numpy()) for batch, _ in loader]
        rounded = [(torch.from_numpy(batch), None) for batch in batches]
        int8_check.write_sample(
            folder / int8_check.CHECK_FILE,
            batches,
            predict(model, rounded, torch.device("cpu"), False).numpy(),
            int8_check.run(OnnxClassifier(int8), batches),
        )
    io.save_preprocessor(data, folder)
    example = next(iter(test))[0]
    card = {
        "modality": layout.modality,
        "classes": classes,
        "backbone": network.name,
        "input": {
            "name": io.input_name,
            "shape": [io.dynamic_axes.get(axis, size) for axis, size in enumerate(example.shape)],
        },
        "preprocessing": io.preprocessing(data),
        "checks": card_checks(input_checks(params)),
        "temperature": temperature,
        "exporter": exporter,
        "opset": settings.opset,
        # which int8 setting was chosen on val and why, or why no int8 file ships; and what predict and the
        # served model check it against on each machine
        "int8": int8_decision
        | (
            {"file": int8.name, "check": int8_check.CHECK_FILE}
            if int8_decision["shipped"]
            else {"file": None}
        ),
    }
    (folder / layout.model_card.name).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    rows = {
        "torch_fp32": scored(reference, labels, len(classes), params)
        | compare(reference, reference)
        | {"megabytes": round(weights.stat().st_size / 2**20, 3)},
        "onnx_fp32": scored(onnx_test, labels, len(classes), params)
        | check
        | {"megabytes": round(fp32.stat().st_size / 2**20, 3)},
    }
    if quantized is not None:
        rows["onnx_int8"] = (
            scored(quantized, labels, len(classes), params)
            | compare(reference, quantized)
            | {"megabytes": round(int8.stat().st_size / 2**20, 3)}
        )
    return rows, int8_decision


def export(params: Params) -> None:
    layout = Layout(params.paths)
    architecture = modality_encoding.of(layout.modality).architecture
    classes = read_json(layout.features_meta)["classes"]
    metrics = read_json(layout.metrics)
    distilled = read_json(layout.distill_meta)
    with atomic_output(layout.exported) as staging:
        model, backbone = load_trained_classifier(
            params.backbone, layout.finetuned_weights, len(classes), load=architecture
        )
        comparison, int8 = export_network(
            params,
            layout,
            model,
            backbone.data,
            params.backbone,
            layout.finetuned_weights,
            metrics["finetune"]["test"].get("temperature", 1.0),
            staging,
        )
        if distilled["enabled"]:  # the distilled student too, beside the fine-tuned network's files
            student = BackboneParams(**distilled["student"]["registry"])
            weights = layout.student_weights("distilled")
            model, backbone = load_trained_classifier(student, weights, len(classes), load=architecture)
            rows, student_int8 = export_network(
                params,
                layout,
                model,
                backbone.data,
                student,
                weights,
                metrics["distilled"]["test"].get("temperature", 1.0),
                staging / layout.student_export.name,
            )
            comparison |= {f"student_{name}": row for name, row in rows.items()}
    decisions = {"onnx_int8": int8} | ({"student_onnx_int8": student_int8} if distilled["enabled"] else {})
    write_json(layout.export_report, comparison | {"int8": int8_record(decisions)})
    write_text(layout.export_summary, table(comparison, decisions, params.export.min_int8_agreement))
    for name, row in comparison.items():
        log.info("%s: %s", name, row)


def main() -> None:
    stage.run(export)


if __name__ == "__main__":
    main()
