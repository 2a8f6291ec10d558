"""Zero-shot classification with a sentence encoder: each text gets the class whose name's (or description's,
from `paths.label_descriptions`) embedding is nearest by cosine, with no labelled example at all. featurize
embeds the names; learning_curve (as k = 0) and evaluate (`zeroshot`) score it from the cached embeddings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from reprotune.pipeline.errors import InputError


def label_prompts(classes: Sequence[str], descriptions: dict[str, str] | None = None) -> list[str]:
    """What zero-shot embeds for each class: its description where one is given, else its name as words
    (`card_arrival` -> `card arrival`)."""
    described = descriptions or {}
    return [
        described.get(name) or " ".join(re.sub(r"[_\-./]+", " ", name).split()) or name for name in classes
    ]


def read_descriptions(path: Path, classes: Sequence[str]) -> dict[str, str]:
    """label -> description from the user's file (label,description rows; absent or header-only: none).
    Every row is checked first: an unknown class, a repeated one or other columns stop with their lines."""
    if not path.is_file():
        return {}
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return {}
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(
            f"{path}: not a UTF-8 CSV file with the columns label,description ({error})"
        ) from None
    frame.columns = [str(name).strip() for name in frame.columns]
    if list(frame.columns) != ["label", "description"]:
        raise InputError(
            f"{path}: the columns must be exactly label,description (got {','.join(frame.columns)})"
        )
    known, problems = set(classes), []
    for line, (label, _) in enumerate(frame.itertuples(index=False), start=2):
        if label.strip() not in known:
            problems.append(f"{path} line {line}: {label!r} is not a class of the data")
    for label in sorted(set(frame.loc[frame["label"].str.strip().duplicated(), "label"].str.strip())):
        problems.append(f"{path}: {label!r} is described more than once; keep one row per class")
    if problems:
        raise InputError("\n".join(problems[:20]))
    return {
        label.strip(): " ".join(text.split()) for label, text in frame.itertuples(index=False) if text.strip()
    }


ZERO_SHOT_SCALE = 20.0  # cosine x this = logits: the scale all-MiniLM-L6-v2 was trained with (MNRL)


def zero_shot_logits(embeddings: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
    """Each text's cosine to each label's embedding, scaled: the nearest label wins."""
    texts = nn.functional.normalize(embeddings, dim=1)
    labels = nn.functional.normalize(label_embeddings, dim=1)
    return ZERO_SHOT_SCALE * texts @ labels.T
