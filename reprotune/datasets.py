"""Images from a manifest as tensors for torch: the one loader featurize, finetune and evaluate share."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from reprotune.images import Background, load_rgb


class ManifestImages(Dataset):
    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable,
        background: Background,
        decode_side: int | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform
        self.background = background
        self.decode_side = decode_side  # see load_rgb: the least side the transform needs

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_rgb(Path(self.paths[index]), self.background, self.decode_side)
        return self.transform(image), self.labels[index]


def worker_count(setting: int | str) -> int:
    """`auto`: decode in the main process on <= 2 cores (workers would only steal the model's cores)."""
    if setting != "auto":
        return int(setting)
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def make_loader(dataset: Dataset, batch_size: int, workers: int, pin: bool = False) -> DataLoader:
    """An in-order loader (featurize, validation, evaluate); training builds its own shuffled one."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )
