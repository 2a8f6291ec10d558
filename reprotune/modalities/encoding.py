"""What featurize, evaluate and predict need from a modality: the pretrained encoder, what its embeddings
depend on, and a model's outputs over rows of the manifest, in row order; and, where the modality has them,
the class names as prompts (zero-shot classification).

One implementation per modality (reprotune/modalities/<modality>/encoding.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import pandas as pd
import torch
from torch import nn

from reprotune.modalities.image.encoding import ENCODING as IMAGES
from reprotune.modalities.text.encoding import ENCODING as TEXTS
from reprotune.models.inference import Inference
from reprotune.models.pretrained import Backbone
from reprotune.pipeline.data_kind import IMAGE, TEXT
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Backbone as BackboneParams


class Encoding(Protocol):
    def load(self, backbone: BackboneParams) -> Backbone:
        """The pretrained encoder params.yaml's `backbone` names, returning pooled embeddings."""
        ...

    def architecture(self, backbone: BackboneParams) -> Backbone:
        """The same encoder with its weights as built, not pretrained: for a trained network, whose own file
        then sets every weight (reprotune/models/classifier.py)."""
        ...

    def describe(self, backbone: Backbone) -> dict:
        """Its preprocessing, as features.json records it."""
        ...

    def preprocessing(self, described: dict) -> str:
        """What `describe` returned (as features.json holds it) in a sentence, for report.md."""
        ...

    def recipe(self, backbone: Backbone, run: Inference) -> dict:
        """What an embedding depends on besides the item, the encoder's name and weights and how it ran
        (the embedding cache's key, reprotune/data/embeddings.py)."""
        ...

    def class_prompts(self, classes: list[str], layout: Layout) -> list[str] | None:
        """Texts that stand for the classes, embedded beside the data for zero-shot classification; None
        where the encoder embeds no text."""
        ...

    def outputs(
        self,
        model: nn.Module,
        rows: pd.DataFrame,
        backbone: Backbone,
        run: Inference,
        layout: Layout,
        desc: str | None = None,
    ) -> Iterator[torch.Tensor]:
        """`model` over split-manifest `rows` (or rows of a `text` column), in row order, a tensor at a time
        (float32, on the CPU)."""
        ...


def of(modality: str) -> Encoding:
    return {IMAGE: IMAGES, TEXT: TEXTS}[modality]
