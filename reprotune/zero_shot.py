"""Zero-shot classification with a sentence encoder: each text gets the class whose name's embedding is nearest
by cosine, with no labelled example at all. featurize embeds the names; learning_curve (as k = 0) and
evaluate (`zeroshot`) score it from the cached embeddings."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn


def label_prompts(classes: Sequence[str]) -> list[str]:
    """What zero-shot embeds for each class: its name as words (`card_arrival` -> `card arrival`)."""
    return [" ".join(re.sub(r"[_\-./]+", " ", name).split()) or name for name in classes]


ZERO_SHOT_SCALE = 20.0  # cosine x this = logits: the scale all-MiniLM-L6-v2 was trained with (MNRL)


def zero_shot_logits(embeddings: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
    """Each text's cosine to each label's embedding, scaled: the nearest label wins."""
    texts = nn.functional.normalize(embeddings, dim=1)
    labels = nn.functional.normalize(label_embeddings, dim=1)
    return ZERO_SHOT_SCALE * texts @ labels.T
