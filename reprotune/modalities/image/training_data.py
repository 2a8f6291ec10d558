"""Image training data for the fine-tuning recipe: augmented, shuffled training batches (each process
taking batch_size / world under torchrun) and in-order validation batches through the eval transform.
Every epoch crops from the same pictures, so each training image larger than the training side is decoded
once per run and kept resized to that side (reprotune/data/resized.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from reprotune.data import resized
from reprotune.data.dataconfig import DataConfig
from reprotune.data.datasets import ManifestImages, eval_images, make_loader, worker_count
from reprotune.data.images import Background, load_rgb
from reprotune.pipeline.atomic_io import atomic_output
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Augment, Params
from reprotune.reporting.progress import progress
from reprotune.training.distributed import barrier
from reprotune.training.finetuning import load_split, mixing
from reprotune.training.loop import (
    Placement,
    TrainingData,
)
from reprotune.training.sampling import training_sampler


def load_data(
    params: Params,
    layout: Layout,
    data: DataConfig,
    classes: list[str],
    rank: int,
    world: int,
    placement: Placement,
) -> TrainingData:
    """Augmented, shuffled training batches (each process takes `batch_size / world` of them) and in-order
    validation batches through the eval transform: the labelled training split alone."""
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    train_rows, train_labels = load_split(manifest, "train", classes)
    return mixed_training_data(
        params,
        layout,
        data,
        data,
        train_rows[["path", "sha256"]].assign(target=train_labels),
        load_split(manifest, "val", classes),
        rank,
        world,
        placement,
        params.finetune.seed,
        drop_last=mixing(params.finetune),  # mixup pairs need an even batch
    )


def mixed_training_data(
    params: Params,
    layout: Layout,
    view: DataConfig,
    student_data: DataConfig,
    train: pd.DataFrame,
    val: tuple[pd.DataFrame, list[int]],
    rank: int,
    world: int,
    placement: Placement,
    seed: int,
    drop_last: bool = False,
) -> TrainingData:
    """For the stages that train on labelled and unlabelled images together (distill, adapt): training
    batches of augmented views cut for `view` (`train`: path, sha256, `target` = label index or UNLABELED),
    in `finetune.sampler`'s order (seeded by `seed`), each process taking batch_size / world; validation through the eval
    transform of `student_data`, the network that trains."""
    settings = params.finetune
    background = tuple(params.clean.background)
    workers = worker_count(settings.num_workers)
    pin = placement.device.type == "cuda"
    train_set = ManifestImages(
        train["path"].tolist(),
        train["target"].tolist(),
        view.train_transform(settings.augment),
        background,
        view.train_decode_side(settings.augment),
        *training_copies(layout, train, view, settings.augment, background, rank),
    )
    val_set = eval_images(*val, student_data, background, layout.resized_copies)
    # The shuffle (and each epoch's worker seeds) come from loader_rng, which checkpoints save; workers are
    # not persistent, so that an epoch's randomness depends on nothing a resumed run could not restore.
    loader_rng = torch.Generator().manual_seed(seed)
    sampler = training_sampler(settings.sampler, train["target"].tolist(), seed, rank, world)
    train_loader = DataLoader(
        train_set,
        settings.batch_size // world,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        generator=loader_rng,
        drop_last=drop_last,
    )
    val_loader = make_loader(val_set, settings.batch_size, workers, pin=pin)
    return TrainingData(train_loader, loader_rng, sampler, val_loader, torch.tensor(val_set.labels))


def training_copies(
    layout: Layout, rows: pd.DataFrame, data: DataConfig, augment: Augment, background: Background, rank: int
) -> tuple[resized.ResizedCopies, list[int]]:
    """The training images larger than the training side, each decoded once and stored resized to that
    side, and each row's copy number (NO_COPY: read the file). Made by rank 0 (the others wait at the
    barrier that follows), named by what they are made from, and reused by a resumed run."""
    side = data.train_decode_side(augment)
    recipe = [rows["sha256"].tolist(), side, data.interpolation, list(background), resized.QUALITY]
    path = layout.training_copies(hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16])
    if rank == 0 and not path.is_file():
        for stale in path.parent.glob("train-copies-*.safetensors"):
            stale.unlink()
        with atomic_output(path) as temporary, resized.CopyPackWriter(temporary) as writer:
            wanted = []
            for name in progress(rows["path"], "training copies", unit="img"):
                with Image.open(name) as header:
                    small = min(header.size) <= side  # EXIF rotation keeps the shorter side
                copy = (
                    None
                    if small
                    else resized.encode_copy(load_rgb(Path(name), background, side), side, data.interpolation)
                )
                wanted.append(writer.add(copy))
            writer.finish(wanted)
    barrier()
    copies = resized.ResizedCopies(path)
    return copies, copies.entries()
