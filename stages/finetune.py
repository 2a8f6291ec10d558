"""finetune: train backbone + head on the images, the head starting from train_head's (LP-FT).

What trains (`finetune.strategy`): `frozen` (head only, on augmented images), `last_n` (also the backbone's
last N layer groups, timm's own grouping), `full`, or `gradual` (head only for `gradual_frozen_epochs`, then
everything, as fastai's fine_tune). BatchNorm layers with frozen weights keep their running statistics, and
with `freeze_bn_stats` all of them do. AdamW or SGD; the backbone learns at `lr x backbone_lr_factor`,
optionally decayed per layer group away from the head; no weight decay on norms and biases; linear warm-up
then cosine decay per step. Early stopping on validation accuracy; epoch 0 (the starting model) is a
candidate, and the best epoch's weights are saved. CUDA trains under bf16 autocast.

Every epoch crops from the same pictures, so each training image larger than the training side is decoded
once per run, before the first epoch, and kept resized to that side (reprotune/resized.py); the epochs then
decode those small JPEGs. Validation reads clean's eval-sized copies.

Texts (the manifest says so) train the same way through the same loop: the sentence encoder and the head,
on shuffled token-id batches padded to their longest text (reprotune/text_encoders.py); augmentation,
mixup and BatchNorm settings do not apply to them.

Resumable: after every epoch the full training state (weights, optimizer, scheduler, RNG states, best model
so far) goes to `paths.checkpoints`; a run that is interrupted resumes there on the next `dvc repro`, as long
as nothing it depends on changed, and ends with the same weights as an uninterrupted run.

Distributed: `torchrun --nproc_per_node N -m stages.finetune` trains data-parallel (DDP: NCCL on CUDA, gloo
on CPU). `batch_size` stays the global batch (each process takes batch_size / N), so the learning rate and
the results stay comparable with a single-process run; rank 0 alone writes outputs and checkpoints.

The epoch loop, early stopping, resume and DDP wrapping are the shared training loop's
(reprotune/training.py: `fit`); this module says what trains, on which data, with which loss and optimizer.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from reprotune import resized, stage
from reprotune.backbones import Backbone, load_backbone
from reprotune.checkpoints import Progress
from reprotune.dataconfig import DataConfig
from reprotune.datasets import ManifestImages, eval_images, make_loader, worker_count
from reprotune.devices import pick_device
from reprotune.distributed import barrier, local_device, process_group
from reprotune.errors import InputError
from reprotune.images import Background, load_rgb
from reprotune.layout import Layout, atomic_output, read_json
from reprotune.models import Classifier
from reprotune.params import Augment, Finetune, Params
from reprotune.seeding import seed_everything
from reprotune.text_encoders import (
    TRAIN_MULTIPLE,
    LengthGroupedBatches,
    TextConfig,
    TokenizedTexts,
    eval_texts,
    loader_order,
    padder,
)
from reprotune.training import (
    Placement,
    Schedule,
    TrainingData,
    fit,
    supervised_loss,
    warmup_cosine,
)

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_accuracy", "lr"]
UNLABELED = -1  # the label of an image without one (distill's unlabelled images, adapt's target images)


def finetune(params: Params, on_batch: Callable[[int, int], None] | None = None) -> None:
    """`on_batch(epoch, batch)` is called before every training step (tests interrupt runs with it)."""
    layout = Layout(params.paths)
    settings = params.finetune
    with process_group() as (rank, world):
        if settings.batch_size % world:
            raise InputError(
                f"params.yaml: finetune.batch_size={settings.batch_size} must divide by the {world} processes"
            )
        seed_everything(settings.seed)
        device = local_device(pick_device(settings.device, "finetune.device"))
        placement = Placement(device, params.backbone.channels_last)
        classes = read_json(layout.features_meta)["classes"]
        text = layout.modality == "text"
        backbone, model = build_model(params, layout, len(classes), placement, text)
        if text:
            data = text_training_data(params, layout, backbone.data, classes, rank, world, placement)
        else:
            data = load_data(params, layout, backbone.data, classes, rank, world, placement)
        optimizer, scheduler = make_optimizer(model, backbone, settings, len(data.train_loader))
        progress, best_state = fit(
            model,
            data,
            supervised_loss(*make_criterion(settings, len(classes))),
            optimizer,
            scheduler,
            placement,
            schedule=Schedule(settings.epochs, settings.patience, settings.freeze_bn_stats, settings.compile),
            checkpoint=layout.checkpoint,
            fingerprint=fingerprint(params, layout),
            rank=rank,
            world=world,
            phase_of=lambda epoch: phase_strategy(settings, epoch),
            enter_phase=lambda phase: freeze(
                model, trainable_backbone_names(backbone, phase, settings.unfreeze_last_n)
            ),
            on_batch=on_batch,
        )
        if rank == 0:
            write_outputs(layout, settings, model, best_state, progress, device, world)
            remove_run_files(layout, data)


# --- what trains -----------------------------------------------------------------------------------------


def trainable_backbone_names(backbone: Backbone, strategy: str, last_n: int) -> set[str]:
    """Backbone parameters that train under a strategy (gradual's unfrozen phase is `full`)."""
    if strategy == "frozen":
        return set()
    groups = backbone.layer_groups[-last_n:] if strategy == "last_n" else backbone.layer_groups
    return {name for group in groups for name in group}


def phase_strategy(settings: Finetune, epoch: int) -> str:
    """The strategy in force during `epoch` (1-based)."""
    if settings.strategy == "gradual":
        return "frozen" if epoch <= settings.gradual_frozen_epochs else "full"
    return settings.strategy


def freeze(model: Classifier, trainable: set[str]) -> None:
    for name, parameter in model.backbone.named_parameters():
        parameter.requires_grad_(name in trainable)


def parameter_groups(
    model: Classifier, backbone: Backbone, settings: Finetune, may_train: set[str]
) -> list[dict]:
    """Head at lr; each backbone layer group at lr x backbone_lr_factor x layer_decay^(distance from the
    head); no weight decay on 1-d tensors (norm scales, biases). Parameters that may train later (gradual)
    are included from the start: while frozen they get no gradient, and the optimizer leaves them alone."""
    named = dict(model.backbone.named_parameters())
    depth = len(backbone.layer_groups)
    parts = [(list(model.head.parameters()), settings.lr)]
    for index, group in enumerate(backbone.layer_groups):
        decay = settings.layer_decay ** (depth - 1 - index) if settings.layer_decay else 1.0
        members = [named[name] for name in group if name in may_train]
        parts.append((members, settings.lr * settings.backbone_lr_factor * decay))
    groups = []
    for parameters, lr in parts:
        groups += [
            {
                "params": [p for p in parameters if p.ndim > 1],
                "lr": lr,
                "weight_decay": settings.weight_decay,
            },
            {"params": [p for p in parameters if p.ndim <= 1], "lr": lr, "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]


def build_model(
    params: Params, layout: Layout, num_classes: int, placement: Placement, text: bool = False
) -> tuple[Backbone, Classifier]:
    """The pretrained backbone with a linear head, the head from train_head's probe (LP-FT) or fresh."""
    backbone = load_backbone(params.backbone, text=text)
    model = Classifier(backbone.model, backbone.num_features, num_classes)
    if params.finetune.head_init == "probe":
        model.head.load_state_dict(load_file(layout.head_weights))  # LP-FT: start from the linear probe
    model.to(placement.device)
    if placement.channels_last:
        model.to(memory_format=torch.channels_last)
    return backbone, model


def load_split(manifest: pd.DataFrame, split: str, classes: list[str]) -> tuple[pd.DataFrame, list[int]]:
    """The manifest rows of `split` and their label indices."""
    rows = manifest[manifest["split"] == split]
    index = {label: i for i, label in enumerate(classes)}
    return rows, [index[label] for label in rows["label"]]


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


def text_training_data(
    params: Params,
    layout: Layout,
    data: TextConfig,
    classes: list[str],
    rank: int,
    world: int,
    placement: Placement,
) -> TrainingData:
    """Shuffled training batches of token ids, padded to their longest text: grouped by length in one
    process (text_encoders.LengthGroupedBatches), plain DistributedSampler shards of batch_size / world
    with torchrun. In-order (length-sorted) validation batches, with their labels in that order."""
    if mixing(params.finetune):
        raise InputError("params.yaml: finetune.augment.mixup and cutmix mix images; set them to 0 for text")
    settings = params.finetune
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    train_rows, train_labels = load_split(manifest, "train", classes)
    val_rows, val_labels = load_split(manifest, "val", classes)
    train_set = TokenizedTexts(data.tokenize(train_rows["text"].tolist()), train_labels)
    loader_rng = torch.Generator().manual_seed(settings.seed)
    collate, pin = padder(data.pad_id, TRAIN_MULTIPLE), placement.device.type == "cuda"
    if world > 1:
        sampler = DistributedSampler(
            train_set, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed
        )
        train_loader = DataLoader(
            train_set, settings.batch_size // world, sampler=sampler, collate_fn=collate, pin_memory=pin
        )
    else:
        sampler = None
        batches = LengthGroupedBatches([len(ids) for ids in train_set.ids], settings.batch_size, loader_rng)
        train_loader = DataLoader(train_set, batch_sampler=batches, collate_fn=collate, pin_memory=pin)
    val_loader = eval_texts(val_rows["text"].tolist(), val_labels, data, settings.batch_size)
    order = loader_order(val_loader)
    return TrainingData(
        train_loader, loader_rng, sampler, val_loader, torch.tensor([val_labels[i] for i in order])
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
    shuffled (seeded by `seed`), each process taking batch_size / world; validation through the eval
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
    sampler = (
        DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        if world > 1
        else None
    )
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
            for name in tqdm(rows["path"], desc="training copies", unit="img", disable=None):
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


def mixing(settings: Finetune) -> bool:
    return settings.augment.mixup > 0 or settings.augment.cutmix > 0


def make_criterion(settings: Finetune, num_classes: int) -> tuple[nn.Module, Callable | None]:
    """The training loss and, with mixup or cutmix, timm's Mixup that mixes each batch first."""
    if not mixing(settings):
        return nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing), None
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    mix = Mixup(
        mixup_alpha=settings.augment.mixup,
        cutmix_alpha=settings.augment.cutmix,
        label_smoothing=settings.label_smoothing,
        num_classes=num_classes,
    )
    return SoftTargetCrossEntropy(), mix


def make_optimizer(
    model: Classifier, backbone: Backbone, settings: Finetune, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW or SGD over every parameter that trains in any phase, with warm-up then cosine decay per step."""
    may_train = set().union(
        *(
            trainable_backbone_names(backbone, phase_strategy(settings, e), settings.unfreeze_last_n)
            for e in range(1, settings.epochs + 1)
        )
    )
    groups = parameter_groups(model, backbone, settings, may_train)
    if settings.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            groups, momentum=settings.momentum, nesterov=settings.momentum > 0
        )
    else:
        optimizer = torch.optim.AdamW(groups)
    warmup = round(settings.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup, settings.epochs * steps_per_epoch)
    )
    return optimizer, scheduler


# --- resume and outputs ----------------------------------------------------------------------------------


def fingerprint(params: Params, layout: Layout) -> str:
    """What the training depends on: a checkpoint made under anything else is not resumed."""
    digest = hashlib.sha256()
    for part in (params.finetune, params.backbone, params.clean.background):
        digest.update(
            json.dumps(part.model_dump(mode="json") if hasattr(part, "model_dump") else part).encode()
        )
    for path in (layout.head_weights, layout.split_manifest):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_outputs(
    layout: Layout,
    settings: Finetune,
    model: Classifier,
    best_state: dict,
    progress: Progress,
    device: torch.device,
    world: int,
) -> None:
    # No timings here: they differ run to run, and a model folder must hash the same for the same result.
    summary = {
        "device": device.type,
        "processes": world,
        "strategy": settings.strategy,
        "head_init": settings.head_init,
        "trainable_parameters_last_epoch": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "best_epoch": progress.best_epoch,
        "best_val_accuracy": progress.best_accuracy,
        "epochs_run": progress.epoch,
    }
    with atomic_output(layout.finetuned) as staging:
        staging.mkdir()
        save_file(
            {name: tensor.detach().cpu().contiguous() for name, tensor in best_state.items()},
            staging / layout.finetuned_weights.name,
        )
        (staging / layout.finetuned_meta.name).write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
    with atomic_output(layout.finetune_history) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(progress.history)


def remove_run_files(layout: Layout, data: TrainingData) -> None:
    """The run finished: its resume point is spent, and its training copies were made for it alone."""
    shutil.rmtree(layout.checkpoint, ignore_errors=True)
    copies = getattr(data.train_loader.dataset, "copies", None)  # texts have none
    if copies is not None:
        copies.path.unlink(missing_ok=True)


def main() -> None:
    stage.run(finetune)


if __name__ == "__main__":
    main()
