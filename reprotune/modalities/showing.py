"""What label_issues and evaluate need from a modality to show items to a person: the split manifest's
column that shows an item in a table, and a figure of items with captions (suspected label errors, the
most confident mistakes).

One implementation per modality (reprotune/modalities/<modality>/showing.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from reprotune.modalities.image.showing import SHOWING as IMAGES
from reprotune.modalities.text.showing import SHOWING as TEXTS
from reprotune.pipeline.data_kind import IMAGE, TEXT


class Showing(Protocol):
    column: str  # the split manifest's column that shows an item (`path` where the file is the item)

    def figure(
        self, items: list[tuple[str, str]], background: list[int] | str, title: str, path: Path
    ) -> None:
        """`items`: (the item's `column` value, caption), in the order given; `title` says when there are
        none. `background`: clean.background, for images with transparency."""
        ...


def of(modality: str) -> Showing:
    return {IMAGE: IMAGES, TEXT: TEXTS}[modality]
