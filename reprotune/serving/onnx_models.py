"""An exported ONNX classifier run with ONNX Runtime (CPU, or CUDA when asked for and present): what export
checks, and what predict, the served model and the benchmarks run; and its card, model.json."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprotune.data.dataconfig import DataConfig
from reprotune.models.model_card import recorded_checks
from reprotune.pipeline.data_kind import IMAGE, TEXT
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import InputChecks


@dataclass(frozen=True)
class ModelCard:
    """model.json, which export writes beside the ONNX files: how to feed the model and read its output."""

    modality: str
    classes: list[str]
    data: Any  # DataConfig for images, TextConfig (the folder's tokenizer) for texts
    temperature: float
    checks: InputChecks  # the rules an input must pass, as clean applied them to the training data
    int8: dict  # export's int8 decision: the file shipped (or None) and the agreement it was accepted at

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        card = json.loads(path.read_text(encoding="utf-8"))
        preprocessing = card["preprocessing"]
        modality = card.get("modality", IMAGE)
        if modality == TEXT:
            from reprotune.models.text_encoders import exported_text_config

            data = exported_text_config(path.parent, preprocessing)
        else:
            data = DataConfig(
                preprocessing["input_size"],
                preprocessing["interpolation"],
                tuple(preprocessing["mean"]),
                tuple(preprocessing["std"]),
                preprocessing["crop_pct"],
            )
        return cls(
            modality,
            card["classes"],
            data,
            card["temperature"],
            recorded_checks(card["checks"]),
            card.get("int8") or {"file": None},
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
    """`logits(batch)` for a batch preprocessed as the model card says: float32 images (batch, 3, side,
    side) or int64 token ids (batch, tokens)."""

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        device: torch.device | None = None,
        spinning: bool = True,
    ) -> None:
        """`spinning=False` where the caller works between batches (predict decodes the next images): ONNX
        Runtime's threads otherwise spin-wait after each run and take the cores that work needs."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers(device))
        graph_input = self.session.get_inputs()[0]
        self.input = graph_input.name
        self.dtype = np.int64 if graph_input.type == "tensor(int64)" else np.float32

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(batch, dtype=self.dtype)})[0]

    def logits_of(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """Every batch's logits, in order, as one array."""
        return np.concatenate([self.logits(batch.numpy()) for batch in batches])
