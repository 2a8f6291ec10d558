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
    assert set(report) == {"torch_fp32", "onnx_fp32", "onnx_int8"}
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

    def off_by_one(model, example, path, opset, exporter):  # an exporter bug: every logit shifted
        shifted = torch.nn.Sequential(model, _Shift()).eval()
        real(shifted, example, path, opset, exporter)

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
