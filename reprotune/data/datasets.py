"""Images from a manifest as tensors for torch: the one loader featurize, finetune and evaluate share."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from reprotune.data.dataconfig import DataConfig
from reprotune.data.images import Background, load_rgb
from reprotune.data.resized import NO_COPY, ResizedCopies


class ManifestImages(Dataset):
    """With `copies` (and `copy_index`, each image's entry in them or NO_COPY), images are read from clean's
    resized copies where they have one: only for the eval transform, whose resize they already did."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable,
        background: Background,
        decode_side: int | None = None,
        copies: ResizedCopies | None = None,
        copy_index: Sequence[int] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform
        self.background = background
        self.decode_side = decode_side  # see load_rgb: the least side the transform needs
        self.copies = copies
        self.copy_index = list(copy_index) if copies is not None else [NO_COPY] * len(self.paths)
        if len(self.copy_index) != len(self.paths):
            raise ValueError(f"{len(self.copy_index)} copy indices for {len(self.paths)} images")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        copy = self.copy_index[index]
        if copy == NO_COPY:
            image = load_rgb(Path(self.paths[index]), self.background, self.decode_side)
        else:
            image = self.copies.image(copy)
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


def eval_images(
    rows: pd.DataFrame, labels: Sequence[int], data: DataConfig, background: Background, copies: Path
) -> ManifestImages:
    """Manifest `rows` (path, resized) through the eval transform, from clean's resized copies where
    the rows have one: how featurize, finetune's validation and evaluate all read images."""
    return ManifestImages(
        rows["path"].tolist(),
        labels,
        data.eval_transform(),
        background,
        data.eval_decode_side,
        ResizedCopies(copies),
        rows["resized"].astype(int).tolist(),
    )
