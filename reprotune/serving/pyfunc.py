"""The model MLflow serves: images or texts in, labels out.

Logged by track as MLflow "models from code": this file is the model's code (MLflow stores the file, not a
pickled object, so loading the model unpickles nothing), with the exported folder (ONNX files, model card,
for texts the tokenizer) as its one artifact. It runs the int8 file when export shipped one and it passes
its check on this machine (reprotune/serving/int8_check.py), else the float32 file.

Input: one row per item, in a column named by the modality:
- `image`: the file's bytes, a base64 string of them, or a path to a file;
- `text`: the text itself.
Output per row: `label`, `confidence` (calibrated with the card's temperature), `error` (empty, or why the item
could not be used: not an image, truncated, too small, too many pixels, too large a payload; not a text) and
`p:<class>` for every class. A bad item gets its error row; it never fails the request or the server.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from scipy.special import softmax

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 2**20  # per image: a larger payload is refused without decoding
# The distributions this file and the reprotune code logged beside it (code_paths) import when serving either
# modality. Listed rather than inferred: MLflow's inference loads the model in a fresh process (about 20 s per
# logged model) and still missed the imports made inside functions (torch, timm, ONNX Runtime).
# tests/test_pipeline.py checks that a served model imports nothing outside these and their requirements.
SERVED_WITH = (
    "mlflow",
    "numpy",
    "onnxruntime",
    "pandas",
    "pillow",
    "pydantic",
    "pyyaml",
    "safetensors",
    "scipy",
    "timm",
    "torch",
    "torchvision",
    "transformers",  # a text model's tokenizer
)


def image_bytes(value: object) -> bytes:
    """An image as bytes, from bytes, a base64 string or a path; ValueError says why not."""
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str) and len(value) < 4096 and Path(value).is_file():
        data = Path(value).read_bytes()
    elif isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not_an_image: neither an existing file path nor base64") from None
    else:
        raise ValueError(f"not_an_image: a {type(value).__name__}, not bytes, base64 or a path")
    if len(data) > MAX_BYTES:
        raise ValueError(f"too_large: {len(data)} bytes > {MAX_BYTES}")
    return data


def image_logits(model, card, values: list) -> tuple[np.ndarray, list[str]]:
    """Logits of the values that are usable images (in order) and each value's error ('' when usable)."""
    import torch

    from reprotune.data.checks import Rejected, decode_checked

    transform = card.data.eval_transform()
    images, errors = [], []
    for value in values:
        try:
            rgb = decode_checked(image_bytes(value), card.checks, card.data.eval_decode_side).rgb
            images.append(transform(rgb))
            errors.append("")
        except Rejected as rejected:
            errors.append(str(rejected))
        except ValueError as error:
            errors.append(str(error))
    logits = model.logits(torch.stack(images).numpy()) if images else np.zeros((0, len(card.classes)))
    return logits, errors


def text_logits(model, card, values: list) -> tuple[np.ndarray, list[str]]:
    """As image_logits, for texts: tokenized and batched by length as export checked them."""
    from reprotune.models.text_encoders import eval_texts, in_row_order

    errors = [
        ("" if value.strip() else "empty_text")
        if isinstance(value, str)
        else f"not_a_text: a {type(value).__name__}"
        for value in values
    ]
    texts = [value for value, error in zip(values, errors, strict=True) if not error]
    if not texts:
        return np.zeros((0, len(card.classes))), errors
    import torch

    loader = eval_texts(texts, [0] * len(texts), card.data, 64)
    batches = [torch.from_numpy(model.logits(ids.numpy())) for ids, _ in loader]
    return in_row_order(torch.cat(batches), loader).numpy(), errors


def requirements() -> list[str]:
    """SERVED_WITH pinned to the versions installed here, where the model is logged and was checked."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SERVED_WITH]


def artifacts_of(folder: Path, into: Path) -> dict[str, str]:
    """The model's artifacts: an exported folder's own files (not a student's folder inside it), copied into
    `into`, which MLflow then stores as the one artifact `folder`."""
    import shutil

    copy = into / "exported"
    shutil.copytree(folder, copy, ignore=lambda _, names: [n for n in names if n == "student"])
    return {"folder": str(copy)}


class Classifier(PythonModel):
    def load_context(self, context) -> None:
        from reprotune.serving.int8_check import chosen_file
        from reprotune.serving.onnx_models import ModelCard, OnnxClassifier

        folder = Path(context.artifacts["folder"])
        self.card = ModelCard.read(folder / "model.json")
        self.model = OnnxClassifier(chosen_file(folder, self.card))
        self.column, self.logits = {"image": ("image", image_logits), "text": ("text", text_logits)}[
            self.card.modality
        ]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            if self.column not in model_input:
                raise ValueError(
                    f"the input needs a column {self.column!r}; it has {list(model_input.columns)}"
                )
            values = model_input[self.column].tolist()
        else:
            values = list(model_input)
        logits, errors = self.logits(self.model, self.card, values)
        classes = self.card.classes
        probabilities = np.full((len(values), len(classes)), np.nan)
        good = [i for i, error in enumerate(errors) if not error]
        if good:
            probabilities[good] = softmax(logits / self.card.temperature, axis=1)
        best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
        frame = pd.DataFrame(
            {
                "label": [classes[b] if not e else "" for b, e in zip(best, errors, strict=True)],
                "confidence": [
                    float(p[b]) if not e else float("nan")
                    for p, b, e in zip(probabilities, best, errors, strict=True)
                ],
                "error": errors,
            }
        )
        for index, name in enumerate(classes):
            frame[f"p:{name}"] = probabilities[:, index]
        return frame


mlflow.models.set_model(Classifier())
