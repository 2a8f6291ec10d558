"""What the data are, decided once by ingest and recorded beside its manifest: images or texts, and
whether they are a built-in sample. Every later stage reads this record; none works it out again."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from reprotune.pipeline.errors import InputError

IMAGE, TEXT = "image", "text"
Modality = Literal["image", "text"]
ITEMS = {IMAGE: "images", TEXT: "texts"}  # what one modality's items are called in messages


@dataclass(frozen=True)
class DataKind:
    modality: Modality
    sample: bool  # the built-in sample (ingest made it because data/raw held no data)

    @property
    def items(self) -> str:
        return ITEMS[self.modality]

    def describe(self) -> str:
        return f"the built-in {self.modality} sample" if self.sample else f"your {self.items}"


def write(path: Path, kind: DataKind) -> None:
    path.write_text(json.dumps(asdict(kind), indent=2) + "\n", encoding="utf-8")


def read(path: Path) -> DataKind:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found; run the ingest stage first (dvc repro)") from None
    return DataKind(record["modality"], record["sample"])
