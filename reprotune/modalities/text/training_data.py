"""Text training data for the fine-tuning recipe: token-id batches padded to their longest text (shuffled and
length-grouped in one process, DistributedSampler shards under torchrun, or class-balanced draws) and in-order
validation batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from reprotune.models.text_encoders import (
    TRAIN_MULTIPLE,
    LengthGroupedBatches,
    TextConfig,
    TokenizedTexts,
    eval_texts,
    loader_order,
    padder,
)
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.training.finetuning import load_split, mixing
from reprotune.training.loop import (
    Placement,
    TrainingData,
)
from reprotune.training.sampling import training_sampler


def text_training_data(
    params: Params,
    layout: Layout,
    data: TextConfig,
    classes: list[str],
    rank: int,
    world: int,
    placement: Placement,
) -> TrainingData:
    """Training batches of token ids, padded to their longest text: shuffled and grouped by length in one
    process (text_encoders.LengthGroupedBatches), DistributedSampler shards of batch_size / world with
    torchrun, or class-balanced draws (`finetune.sampler: balanced`, reprotune/training/sampling.py). In-order (length-sorted) validation batches, with their labels in that order."""
    if mixing(params.finetune):
        raise InputError("params.yaml: finetune.augment.mixup and cutmix mix images; set them to 0 for text")
    settings = params.finetune
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    train_rows, train_labels = load_split(manifest, "train", classes)
    val_rows, val_labels = load_split(manifest, "val", classes)
    train_set = TokenizedTexts(data.tokenize(train_rows["text"].tolist()), train_labels)
    loader_rng = torch.Generator().manual_seed(settings.seed)
    collate, pin = padder(data.pad_id, TRAIN_MULTIPLE), placement.device.type == "cuda"
    sampler = training_sampler(settings.sampler, train_labels, settings.seed, rank, world)
    if sampler is not None:
        train_loader = DataLoader(
            train_set, settings.batch_size // world, sampler=sampler, collate_fn=collate, pin_memory=pin
        )
    else:  # one process, shuffled: batches of similar lengths pad less
        batches = LengthGroupedBatches([len(ids) for ids in train_set.ids], settings.batch_size, loader_rng)
        train_loader = DataLoader(train_set, batch_sampler=batches, collate_fn=collate, pin_memory=pin)
    val_loader = eval_texts(val_rows["text"].tolist(), val_labels, data, settings.batch_size)
    order = loader_order(val_loader)
    return TrainingData(
        train_loader, loader_rng, sampler, val_loader, torch.tensor([val_labels[i] for i in order])
    )
