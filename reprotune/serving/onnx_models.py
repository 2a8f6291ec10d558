"""An exported ONNX classifier run with ONNX Runtime on the CPU: what export checks, and what predict and the
benchmarks run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reprotune.data.dataconfig import DataConfig
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Clean


@dataclass(frozen=True)
class ModelCard:
    """model.json, which export writes beside the ONNX files: how to feed the model and read its output."""

    classes: list[str]
    data: DataConfig
    temperature: float
    checks: Clean  # the rules an input image must pass, as clean applied them to the training images

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        card = json.loads(path.read_text(encoding="utf-8"))
        preprocessing = card["preprocessing"]
        data = DataConfig(
            preprocessing["input_size"],
            preprocessing["interpolation"],
            tuple(preprocessing["mean"]),
            tuple(preprocessing["std"]),
            preprocessing["crop_pct"],
        )
        return cls(
            card["classes"], data, card["temperature"], Clean.model_validate_json(json.dumps(card["checks"]))
        )


def providers(device: torch.device | None) -> list:
    """ONNX Runtime's execution providers for a torch device: CUDA (that GPU) when asked for and this
    onnxruntime build has it, with the CPU after it for any operator CUDA lacks; else the CPU alone."""
    import onnxruntime as ort

    if device is not None and device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(
                f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu), or "
                "use --device cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxClassifier:
    """`logits(images)` for a float32 batch (batch, 3, side, side) preprocessed as the model card says."""

    def __init__(self, path: Path, threads: int | None = None, device: torch.device | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers(device))
        self.input = self.session.get_inputs()[0].name

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(images, dtype=np.float32)})[0]

    def logits_of(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """Every batch's logits, in order, as one array."""
        return np.concatenate([self.logits(batch.numpy()) for batch in batches])
