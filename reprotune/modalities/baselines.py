"""What the baseline stage needs from a modality: the classic model that transfers nothing, fitted on
train, chosen on val, scored on val and test (the bar transfer has to clear).

One implementation per modality (reprotune/modalities/<modality>/baseline.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from reprotune.modalities.image.baseline import BASELINE as IMAGES
from reprotune.modalities.text.baseline import BASELINE as TEXTS
from reprotune.pipeline.data_kind import IMAGE, TEXT
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Baseline


class NoTransferBaseline(Protocol):
    def fit(
        self,
        settings: Baseline,
        background: list[int] | str,  # clean.background (images only)
        layout: Layout,
        manifest: pd.DataFrame,
        classes: list[str],
    ) -> tuple[dict[str, np.ndarray], dict]:
        """(log-probabilities per scored split, in manifest row order; baseline.json's `chosen`,
        `candidates` with their val accuracy, `val_accuracy` and what was used) from split's manifest."""
        ...

    def describe(self, found: dict) -> str:
        """What `fit` chose, in words, for report.md."""
        ...


def of(modality: str) -> NoTransferBaseline:
    return {IMAGE: IMAGES, TEXT: TEXTS}[modality]
