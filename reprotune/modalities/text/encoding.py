"""Texts through a sentence encoder (reprotune/models/text_encoders.py): token ids in length-sorted batches,
outputs put back in row order; and the class names as prompts, for zero-shot classification."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import torch
from torch import nn

from reprotune.models.inference import Inference, outputs
from reprotune.models.pretrained import Backbone
from reprotune.models.text_encoders import eval_texts, in_row_order, load_text_encoder
from reprotune.models.zero_shot import label_prompts, read_descriptions
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Backbone as BackboneParams


class TextEncoding:
    def load(self, backbone: BackboneParams) -> Backbone:
        return load_text_encoder(backbone)

    def architecture(self, backbone: BackboneParams) -> Backbone:
        return load_text_encoder(backbone)  # a sentence encoder's files are its architecture and tokenizer

    def describe(self, backbone: Backbone) -> dict:
        return {"modality": "text", "text_config": backbone.data.describe()}

    def preprocessing(self, described: dict) -> str:
        config = described["text_config"]
        return (
            f"Tokenizer `{config['tokenizer']}` of the encoder, at most {config['max_length']} tokens per text; "
            "pooling and normalisation from the encoder's own configuration."
        )

    def recipe(self, backbone: Backbone, run: Inference) -> dict:
        import sentence_transformers
        import transformers

        return {
            **self.describe(backbone),
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        }

    def class_prompts(self, classes: list[str], layout: Layout) -> list[str] | None:
        return label_prompts(classes, read_descriptions(layout.label_descriptions, classes))

    def outputs(
        self,
        model: nn.Module,
        rows: pd.DataFrame,
        backbone: Backbone,
        run: Inference,
        layout: Layout,
        desc: str | None = None,
    ) -> Iterator[torch.Tensor]:
        """One tensor, in row order. No row padding: on text, the batch's shape does not change an output
        (reprotune/models/text_encoders.py)."""
        loader = eval_texts(rows["text"].tolist(), [0] * len(rows), backbone.data, run.batch_size)
        batches = outputs(model, loader, run.device, False, run.bf16, desc=desc)
        yield in_row_order(torch.cat(list(batches)), loader)


ENCODING = TextEncoding()
