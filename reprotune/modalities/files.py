"""What ingest needs from a modality: which files in the data folder are its data, one manifest row per
item, and its built-in sample. ingest decides the modality here, once (reprotune/pipeline/data_kind.py records it).

One implementation per modality (reprotune/modalities/<modality>/files.py); a new modality is one more
entry in MODALITIES.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pandas as pd

from reprotune.modalities.image.files import FILES as IMAGES
from reprotune.modalities.text.files import FILES as TEXTS
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout


class Files(Protocol):
    modality: str  # its name in params.yaml (ingest.modality) and data_kind.json
    units: str  # what a manifest row is: files, rows

    def claims(self, root: Path, files: list[Path]) -> list[Path]:
        """The files under `root` that only this modality's data could be (`ingest.modality: auto`)."""
        ...

    def named(self, root: Path, claimed: list[Path]) -> str:
        """Those files in a few words, for the error when two modalities claim files."""
        ...

    def scan(self, root: Path, files: list[Path]) -> pd.DataFrame:
        """ingest's manifest: one row per item under `root` (`files`: every file there)."""
        ...

    def sample(self, layout: Layout, staging: Path, image_side: int) -> pd.DataFrame:
        """Write the built-in sample into `staging` (ingest's output folder) and return its manifest, each
        row named by where it lives once the folder is in place."""
        ...


MODALITIES: tuple[Files, ...] = (IMAGES, TEXTS)  # the first is the default for a folder none claims


def named(modality: str) -> Files:
    return next(files for files in MODALITIES if files.modality == modality)


def detect(root: Path, files: list[Path], setting: str) -> Files:
    """The modality of the data in `root`: as `ingest.modality` sets it, or (auto) the one whose files are
    there. Files of two modalities are an error, not a guess."""
    if setting != "auto":
        return named(setting)
    claimed = [(modality, modality.claims(root, files)) for modality in MODALITIES]
    holding = [(modality, found) for modality, found in claimed if found]
    if len(holding) > 1:
        raise InputError(
            f"{root}: holds both "
            + " and ".join(modality.named(root, found) for modality, found in holding)
            + "; keep one modality in it, or set ingest.modality to "
            + " or ".join(modality.modality for modality in MODALITIES)
            + " (the files of the other kind are then reported as unusable)"
        )
    return holding[0][0] if holding else MODALITIES[0]
