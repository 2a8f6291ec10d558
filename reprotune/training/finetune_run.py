"""One fine-tuning run from params: what the finetune stage trains and what each of tune's trials trains, so
that a trial's validation score is the score finetune reaches with the trial's values in params.yaml.

The recipe (model, what trains, optimizer, loss) is reprotune/training/finetuning.py's, the data the
modality's (reprotune/modalities/training_data.py), the epoch loop reprotune/training/loop.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from reprotune.modalities import encoding as modality_encoding
from reprotune.modalities import training_data
from reprotune.models.classifier import Classifier
from reprotune.pipeline.atomic_io import read_json
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.training.checkpoints import Progress
from reprotune.training.devices import pick_device
from reprotune.training.distributed import local_device
from reprotune.training.finetuning import (
    build_model,
    fingerprint,
    freeze,
    load_split,
    make_criterion,
    make_optimizer,
    phase_strategy,
    schedule,
    trainable_backbone_names,
)
from reprotune.training.loop import Evaluation, Placement, TrainingData, fit, supervised_loss
from reprotune.training.seeding import seed_everything


@dataclass
class Finetuned:
    """A finished run: the model (its last epoch's weights), the best epoch's state, the progress (history,
    best epoch and score), where it ran, and its data (whose training copies the caller may remove)."""

    model: Classifier
    best_state: dict
    progress: Progress
    device: torch.device
    data: TrainingData
    classes: list[str]


def run_finetune(
    params: Params,
    layout: Layout,
    rank: int,
    world: int,
    checkpoint: Path,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[int, Evaluation], None] | None = None,
) -> Finetuned:
    """Fine-tune as `params.finetune` says, resuming from `checkpoint` when it was made under the same
    settings. `on_batch(epoch, batch)` runs before every step (tests interrupt runs with it),
    `on_epoch(epoch, validation)` after every epoch's validation (tune's pruner)."""
    settings = params.finetune
    if settings.batch_size % world:
        raise InputError(
            f"params.yaml: finetune.batch_size={settings.batch_size} must divide by the {world} processes"
        )
    seed_everything(settings.seed)
    device = local_device(pick_device(settings.device, "params.yaml: finetune.device"))
    placement = Placement(device, params.backbone.channels_last)
    classes = read_json(layout.features_meta)["classes"]
    modality = layout.modality
    backbone, model = build_model(
        params, layout, len(classes), placement, modality_encoding.of(modality).load
    )
    data = training_data.of(modality)(params, layout, backbone.data, classes, rank, world, placement)
    optimizer, scheduler = make_optimizer(model, backbone, settings, len(data.train_loader))
    train_labels = load_split(layout.read_manifest(layout.split_manifest, {"label": str}), "train", classes)[
        1
    ]
    criterion, mix = make_criterion(settings, len(classes), train_labels)
    progress, best_state = fit(
        model,
        data,
        supervised_loss(criterion.to(device), mix),
        optimizer,
        scheduler,
        placement,
        schedule=schedule(settings),
        checkpoint=checkpoint,
        fingerprint=fingerprint(params, layout),
        rank=rank,
        world=world,
        phase_of=lambda epoch: phase_strategy(settings, epoch),
        enter_phase=lambda phase: freeze(
            model, trainable_backbone_names(backbone, phase, settings.unfreeze_last_n)
        ),
        on_batch=on_batch,
        on_epoch=on_epoch,
    )
    return Finetuned(model, best_state, progress, device, data, classes)
