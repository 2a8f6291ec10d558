"""Images from a manifest as tensors for torch: the one loader featurize, finetune and evaluate share."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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


def in_order(dataset: Dataset, batch_size: int, threads: int) -> Iterator[list]:
    """The dataset's items in order, `batch_size` at a time, made by `threads` threads while the caller
    works on the batch before (0: in the calling thread). Threads, not worker processes: Pillow's decoding
    and resizing, torch's ops and ONNX Runtime's forward pass all release the GIL, so preprocessing overlaps
    the model with nothing copied between processes. At most two batches are made ahead, so memory stays
    bounded on any folder."""
    if threads <= 0:
        for start in range(0, len(dataset), batch_size):
            yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        return
    indices = iter(range(len(dataset)))
    with ThreadPoolExecutor(threads, thread_name_prefix="preprocess") as pool:
        ahead: deque = deque()

        def submit_next() -> None:
            if (index := next(indices, None)) is not None:
                ahead.append(pool.submit(dataset.__getitem__, index))

        for _ in range(2 * batch_size):
            submit_next()
        try:
            while ahead:
                batch = []
                while ahead and len(batch) < batch_size:
                    batch.append(ahead.popleft().result())
                    submit_next()
                yield batch
        finally:  # the caller stopped early (an error): drop what is queued; the pool waits for the rest
            for future in ahead:
                future.cancel()


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
