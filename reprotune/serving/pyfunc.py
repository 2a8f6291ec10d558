"""The model MLflow serves: images in, labels out.

Logged by track as MLflow "models from code": this file is the model's code (MLflow stores the file, not a
pickled object, so loading the model unpickles nothing), with the exported ONNX file and its model card as
artifacts. Input: a column `image`, one image per row, as the file's bytes, a base64 string of them, or a path
to a file. Output per row: `label`, `confidence` (calibrated with the card's temperature), `error` (empty, or
why the image could not be used: not an image, truncated, too small, too many pixels, too large a payload)
and `p:<class>` for every class. A bad image gets its error row; it never fails the request or the server.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from scipy.special import softmax

MAX_BYTES = 64 * 2**20  # per image: a larger payload is refused without decoding


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


class ImageClassifier(PythonModel):
    def load_context(self, context) -> None:
        from reprotune.serving.onnx_models import ModelCard, OnnxClassifier

        self.card = ModelCard.read(Path(context.artifacts["card"]))
        self.model = OnnxClassifier(Path(context.artifacts["model"]))
        self.transform = self.card.data.eval_transform()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        from reprotune.data.checks import Rejected, decode_checked

        values = model_input["image"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        images, errors = [], []
        for value in values:
            try:
                rgb = decode_checked(
                    image_bytes(value), self.card.checks, self.card.data.eval_decode_side
                ).rgb
                images.append(self.transform(rgb))
                errors.append("")
            except Rejected as rejected:
                errors.append(str(rejected))
            except ValueError as error:
                errors.append(str(error))
        classes = self.card.classes
        probabilities = np.full((len(values), len(classes)), np.nan)
        if images:
            logits = self.model.logits(torch.stack(images).numpy())
            good = [i for i, error in enumerate(errors) if not error]
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


mlflow.models.set_model(ImageClassifier())
