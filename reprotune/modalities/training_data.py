"""What finetune needs from a modality: its training batches (each process its share under torchrun) and
in-order validation batches, for the loop in reprotune/training/loop.py.

One implementation per modality (reprotune/modalities/<modality>/training_data.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from reprotune.modalities.image.training_data import load_data
from reprotune.modalities.text.training_data import text_training_data
from reprotune.pipeline.data_kind import IMAGE, TEXT
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.training.loop import Placement, TrainingData


class LoadTrainingData(Protocol):
    def __call__(
        self,
        params: Params,
        layout: Layout,
        data: Any,  # the backbone's preprocessing (Backbone.data)
        classes: list[str],
        rank: int,
        world: int,
        placement: Placement,
    ) -> TrainingData: ...


def of(modality: str) -> LoadTrainingData:
    return {IMAGE: load_data, TEXT: text_training_data}[modality]
