"""What the data are, decided once by ingest and recorded beside its manifest: images or texts, and
whether they are a built-in sample. Every later stage reads this record; none works it out again."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from reprotune.errors import InputError

IMAGE, TEXT = "image", "text"
Modality = Literal["image", "text"]


@dataclass(frozen=True)
class DataKind:
    modality: Modality
    sample: bool  # the built-in sample (ingest made it because data/raw held no data)

    def describe(self) -> str:
        if self.sample:
            return "the built-in image sample" if self.modality == IMAGE else "the built-in text sample"
        return "your images" if self.modality == IMAGE else "your texts"


def write(path: Path, kind: DataKind) -> None:
    path.write_text(json.dumps(asdict(kind), indent=2) + "\n", encoding="utf-8")


def read(path: Path) -> DataKind:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found; run the ingest stage first (dvc repro)") from None
    return DataKind(record["modality"], record["sample"])
