"""What clean and split need from a modality: clean's whole job on its rows, and split's leakage check.

One implementation per modality (reprotune/modalities/<modality>/cleaning.py); `of` picks the one ingest
recorded. Like every job of a modality, this one sits in its own module so that a stage depends on the
code of the jobs it uses, and an edit re-runs only the stages that use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pandas as pd

from reprotune.modalities.image.cleaning import CLEANING as IMAGES
from reprotune.modalities.text.cleaning import CLEANING as TEXTS
from reprotune.pipeline.data_kind import IMAGE, TEXT
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Clean


class Cleaning(Protocol):
    units: str  # what ingest's manifest rows are: files, rows
    items: str  # what is kept: images, texts
    split_column: str  # the column split's manifest keeps so that later stages can read each item
    mixed_splits: str  # why some rows with a given split and some without are refused
    sample: str  # the built-in sample, as report.md names it

    def clean(
        self,
        manifest: pd.DataFrame,
        relabels: dict[str, str],
        rules: Clean,
        backbone: tuple[str, int | str | None],
        layout: Layout,
        staging: Path,
    ) -> tuple[pd.DataFrame, dict]:
        """The kept rows, written with whatever else the modality keeps into `staging` (clean's output
        folder), and the cleaning report (reprotune/data/cleaning_steps.py: every scanned row kept or dropped
        once)."""
        ...

    def leakage(self, kept: pd.DataFrame, layout: Layout, grouping_distance: int | None) -> dict:
        """Pairs of near-identical items that ended up in different splits (split.json's `leakage`)."""
        ...

    def near_duplicates(self, rules: Clean) -> str:
        """What a near-duplicate group is, for report.md (`... of identical items, N of <this>`)."""
        ...

    def leakage_sentence(self, leakage: dict) -> str:
        """`leakage` in one sentence for report.md."""
        ...


def of(modality: str) -> Cleaning:
    return {IMAGE: IMAGES, TEXT: TEXTS}[modality]
