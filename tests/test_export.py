"""export on the tiny test backbone: the ONNX file agrees with torch and takes any batch size, int8 is made
and scored, the card carries what a user needs, and a file that fails the check stops the stage by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.serving.onnx_models import OnnxClassifier
from stages import export
from tests.conftest import ROOT


def test_export_writes_checked_onnx_int8_and_a_card(trained_tiny):
    tiny_params = trained_tiny
    layout = Layout(tiny_params.paths)
    card = json.loads(layout.model_card.read_text())
    assert card["classes"] == ["blue", "green", "red"]
    metrics = json.loads(layout.metrics.read_text())
    assert card["temperature"] == metrics["finetune"]["test"]["temperature"]
    assert card["preprocessing"]["input_size"] == 32 and card["input"]["shape"] == ["batch", 3, 32, 32]
    report = json.loads(layout.export_report.read_text())
    assert set(report) == {"torch_fp32", "onnx_fp32", "onnx_int8", "int8"}
    # int8 ships only after the same kind of check: agreement with torch on val chose it, test accepted it
    assert card["int8"]["shipped"] and card["int8"]["file"] == "model.int8.onnx"
    assert (
        card["int8"]["val_top1_agreement"][card["int8"]["setting"]] >= tiny_params.export.min_int8_agreement
    )
    assert report["onnx_int8"]["top1_agreement"] == card["int8"]["test_top1_agreement"]
    assert report["int8"]["onnx_int8"]["shipped"] is True
    assert report["onnx_fp32"]["top1_agreement"] == 1.0
    assert report["onnx_fp32"]["max_logit_difference"] <= tiny_params.export.max_logit_difference
    assert report["onnx_fp32"]["accuracy"] == report["torch_fp32"]["accuracy"]
    assert 0 < report["onnx_int8"]["megabytes"] and 0 <= report["onnx_int8"]["top1_agreement"] <= 1
    for model in (layout.onnx_model, layout.int8_model):
        classifier = OnnxClassifier(model)
        for batch in (1, 7):  # any batch size
            assert classifier.logits(np.zeros((batch, 3, 32, 32), np.float32)).shape == (batch, 3)
    assert "| onnx_int8 |" in layout.export_summary.read_text()
    for model in (layout.onnx_model, layout.int8_model):  # no source paths: the same bytes from any checkout
        assert str(ROOT).encode() not in model.read_bytes()


def test_a_file_that_disagrees_with_torch_stops_the_stage_naming_every_exporter(trained_tiny, monkeypatch):
    exported = Layout(trained_tiny.paths).exported
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    real = export.to_onnx

    def off_by_one(model, example, path, opset, exporter, io):  # an exporter bug: every logit shifted
        shifted = torch.nn.Sequential(model, _Shift()).eval()
        real(shifted, example, path, opset, exporter, io)

    monkeypatch.setattr(export, "to_onnx", off_by_one)
    with pytest.raises(
        InputError, match=r"failed its check .* dynamo: .*max_logit_difference.* torchscript: "
    ):
        export.export(trained_tiny)
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before  # the last good export stands
    assert not list(exported.parent.glob(".*partial*"))  # and nothing half-written is left


class _Shift(torch.nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + 1.0


def test_an_int8_file_that_disagrees_with_torch_is_not_shipped(trained_tiny, tmp_path):
    """The gate itself, on real quantization: against a reference whose top-1 no int8 file can match (torch's
    logits reversed), every setting is tried on val, none is kept, and no file is left."""
    layout = Layout(trained_tiny.paths)
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    from reprotune.modalities.exporting import of
    from reprotune.serving.onnx_models import ModelCard

    card, io = ModelCard.read(layout.model_card), of("image")
    loaders = {
        split: io.inputs(trained_tiny, layout, manifest[manifest["split"] == split], card.data)[0]
        for split in ("train", "val", "test")
    }
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    fp32.write_bytes(layout.onnx_model.read_bytes())
    reversed_logits = {
        split: -OnnxClassifier(fp32).logits_of(images for images, _ in loaders[split])
        for split in ("val", "test")
    }
    checks = {split: (loaders[split], reversed_logits[split]) for split in ("val", "test")}
    decision, logits = export.quantized_checked(fp32, int8, loaders["train"], checks, 0.99, io)
    assert logits is None and not int8.exists() and not decision["shipped"]
    assert list(decision["val_top1_agreement"]) == list(io.int8_settings)  # every setting was tried
    assert decision["why"].startswith(
        "no int8 setting agreed with torch on export.min_int8_agreement=0.99 of val"
    )


def test_without_an_int8_file_the_report_and_card_say_why(trained_tiny, monkeypatch, tmp_path):
    import shutil

    # its own export folder and reports (a copy), so the shared trained project stays as it was
    shutil.copytree(trained_tiny.paths.reports, tmp_path / "reports")
    paths = trained_tiny.paths.model_copy(
        update={"exported": str(tmp_path / "export"), "reports": str(tmp_path / "reports")}
    )
    params = trained_tiny.model_copy(update={"paths": paths})
    layout = Layout(params.paths)
    why = "no int8 setting agreed with torch on export.min_int8_agreement=0.99 of val (u8s8 0.5000)"

    def refused(fp32, int8, calibration, checks, minimum, io):
        return {"setting": None, "val_top1_agreement": {"u8s8": 0.5}, "shipped": False, "why": why}, None

    monkeypatch.setattr(export, "quantized_checked", refused)
    export.export(params)
    report = json.loads(layout.export_report.read_text())
    assert "onnx_int8" not in report and report["int8"]["onnx_int8"]["shipped"] is False
    assert not layout.int8_model.exists() and not (layout.exported / "int8_check.npz").exists()
    assert json.loads(layout.model_card.read_text())["int8"] == {
        "setting": None,
        "val_top1_agreement": {"u8s8": 0.5},
        "shipped": False,
        "why": why,
        "file": None,
    }
    assert (
        f"**onnx_int8: no int8 file ships**: {why}. Use the float32 file."
        in layout.export_summary.read_text()
    )
