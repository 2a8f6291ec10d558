"""What export needs from a modality to write a trained network as ONNX: the graph's input, the rows' inputs a
batch at a time, the files that turn raw input into that input (a tokenizer; nothing for images, whose
preprocessing is numbers in the card), the int8 settings worth trying and how to quantize with each, and what
the served model is shown as its input example.

One implementation per modality (reprotune/modalities/<modality>/exporting.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from torch.utils.data import DataLoader

from reprotune.modalities.image.exporting import EXPORTING as IMAGES
from reprotune.modalities.text.exporting import EXPORTING as TEXTS
from reprotune.pipeline.data_kind import IMAGE, TEXT
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params


class Exporting(Protocol):
    input_name: str  # the ONNX graph's input: `images` (float32) or `ids` (int64 token ids)
    dynamic_axes: dict[int, str]  # the input's axes of any size (batch, and tokens for texts)
    column: str  # the served model's input column: `image` or `text`
    int8_settings: dict[str, dict]  # name -> quantization options, in the order they are tried

    def inputs(
        self, params: Params, layout: Layout, rows: pd.DataFrame, data: Any
    ) -> tuple[DataLoader, list[int]]:
        """The rows' model inputs, a batch at a time, and the row index of each output in the loader's
        order (texts are batched by length)."""
        ...

    def preprocessing(self, data: Any) -> dict:
        """The card's `preprocessing`: how raw input becomes the graph's input."""
        ...

    def save_preprocessor(self, data: Any, folder: Path) -> None:
        """Files the card's preprocessing names, written into the exported folder."""
        ...

    def quantize(self, fp32: Path, int8: Path, calibration: DataLoader | None, setting: str) -> None:
        """`fp32` as int8 at `int8` with `int8_settings[setting]`; `calibration` only where the method
        calibrates (static quantization of images)."""
        ...

    def calibration_rows(self, params: Params, train: pd.DataFrame) -> pd.DataFrame | None:
        """Training rows that calibrate int8 quantization, or None when the method needs none."""
        ...

    def served_example(self, layout: Layout, rows: pd.DataFrame) -> pd.DataFrame:
        """The served model's input for `rows` (its input example: two test rows)."""
        ...


def of(modality: str) -> Exporting:
    return {IMAGE: IMAGES, TEXT: TEXTS}[modality]
