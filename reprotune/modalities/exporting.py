"""Whether a modality's networks are exported to ONNX (and so served by MLflow from that file): export,
track and the report ask here.

One answer per modality (reprotune/modalities/<modality>/exporting.py).
"""

from __future__ import annotations

from reprotune.modalities.image import exporting as images
from reprotune.modalities.text import exporting as texts
from reprotune.pipeline.data_kind import IMAGE, TEXT


def not_exported(modality: str) -> str | None:
    """None when the modality's networks are exported; otherwise why not, for the user to read."""
    return {IMAGE: images.NOT_EXPORTED, TEXT: texts.NOT_EXPORTED}[modality]
