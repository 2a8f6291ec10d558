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

Resumable: after every epoch the full training state (weights, optimizer, scheduler, RNG states, best model
so far) goes to `paths.checkpoints`; a run that is interrupted resumes there on the next `dvc repro`, as long
as nothing it depends on changed, and ends with the same weights as an uninterrupted run.

Distributed: `torchrun --nproc_per_node N -m stages.finetune` trains data-parallel (DDP: NCCL on CUDA, gloo
on CPU). `batch_size` stays the global batch (each process takes batch_size / N), so the learning rate and
the results stay comparable with a single-process run; rank 0 alone writes outputs and checkpoints.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from reprotune import resized, stage
from reprotune.backbones import Backbone, Classifier, DataConfig, load_backbone, pick_device
from reprotune.datasets import ManifestImages, eval_images, make_loader, worker_count
from reprotune.images import Background, load_rgb
from reprotune.layout import Layout, atomic_output, read_json
from reprotune.params import Augment, Finetune, Params

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_accuracy", "lr"]


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


def train_mode(model: nn.Module, freeze_bn_stats: bool) -> None:
    """train(), except BatchNorm layers that must keep their running statistics: those with frozen weights
    always, and all of them with `freeze_bn_stats` (batch statistics of a small batch from a domain far
    from ImageNet shift the features so much that the probe's head starts at chance)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            freeze_bn_stats or not any(p.requires_grad for p in module.parameters(recurse=False))
        ):
            module.eval()


# --- how it trains ---------------------------------------------------------------------------------------


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


def make_optimizer(groups: list[dict], settings: Finetune) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=settings.momentum, nesterov=settings.momentum > 0)
    return torch.optim.AdamW(groups)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    criterion: nn.Module,
    device: torch.device,
    channels_last: bool,
    freeze_bn_stats: bool,
    epoch: int,
    mix: Callable | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> float:
    train_mode(model, freeze_bn_stats)
    total, seen = 0.0, 0
    for batch, (images, labels) in enumerate(
        tqdm(loader, desc=f"finetune epoch {epoch}", unit="batch", disable=None)
    ):
        if on_batch:
            on_batch(epoch, batch)
        images, labels = to_device(images, device, channels_last), labels.to(device)
        if mix:
            images, labels = mix(images, labels)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(images)
        seen += len(images)
    return total / seen


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Logits (float32, on the CPU) for every image of the loader, in order."""
    model.eval()
    outputs = []
    for images, _ in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(model(to_device(images, device, channels_last)).float().cpu())
    return torch.cat(outputs)


def mixing(settings: Finetune) -> bool:
    return settings.augment.mixup > 0 or settings.augment.cutmix > 0


def seed_everything(seed: int) -> None:
    """timm's crops draw from `random`, mixup from numpy, torchvision's jitter from torch: seed all three."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- resume ----------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Everything besides tensors that an interrupted run needs to carry on exactly where it was."""

    fingerprint: str
    epoch: int = 0
    best_epoch: int = 0
    best_accuracy: float = -1.0
    history: list[dict] = field(default_factory=list)


def fingerprint(params: Params, layout: Layout) -> str:
    """What the training depends on: a checkpoint made under anything else is not resumed."""
    digest = hashlib.sha256()
    for part in (params.finetune, params.backbone, params.clean.background):
        digest.update(json.dumps(part if isinstance(part, tuple) else part.model_dump(mode="json")).encode())
    for path in (layout.head_weights, layout.split_manifest):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as safetensors-ready tensors plus JSON (no pickle anywhere)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            elif value is not None:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    model: Classifier,
    best_state: dict,
    optimizer,
    scheduler,
    loader_rng: torch.Generator,
    progress: Progress,
) -> None:
    optimizer_tensors, optimizer_meta = flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()}
    tensors |= optimizer_tensors
    tensors |= {"rng.torch": torch.get_rng_state(), "rng.loader": loader_rng.get_state()}
    numpy_state = np.random.get_state()
    meta = {
        "progress": asdict(progress),
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict(),
        "rng.python": random.getstate(),
        "rng.numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    with atomic_output(path) as staging:
        staging.mkdir()
        save_file(tensors, staging / "state.safetensors")
        (staging / "state.json").write_text(json.dumps(meta), encoding="utf-8")


def load_checkpoint(
    path: Path, model: Classifier, optimizer, scheduler, loader_rng: torch.Generator, expected: str
) -> tuple[Progress, dict] | None:
    """Restore a matching checkpoint into the objects; return (progress, best_state), or None to start afresh."""
    if not (path / "state.json").is_file():
        return None
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    progress = Progress(**meta["progress"])
    if progress.fingerprint != expected:
        log.info("checkpoint in %s was made under other params or data: starting afresh", path)
        return None
    tensors = load_file(path / "state.safetensors")
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    best_state = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    loader_rng.set_state(tensors["rng.loader"])
    version, internal, gauss = meta["rng.python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = meta["rng.numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    log.info("resuming from %s after epoch %d", path, progress.epoch)
    return progress, best_state


# --- the stage -------------------------------------------------------------------------------------------


def load_split(manifest: pd.DataFrame, split: str, classes: list[str]) -> tuple[pd.DataFrame, list[int]]:
    """The manifest rows of `split` and their label indices."""
    rows = manifest[manifest["split"] == split]
    index = {label: i for i, label in enumerate(classes)}
    return rows, [index[label] for label in rows["label"]]


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
    if dist.is_initialized():
        dist.barrier()
    copies = resized.ResizedCopies(path)
    return copies, copies.entries()


def distributed() -> tuple[int, int]:
    """(rank, world size); under torchrun, joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def finetune(params: Params, on_batch: Callable[[int, int], None] | None = None) -> None:
    """`on_batch(epoch, batch)` is called before every training step (tests interrupt runs with it)."""
    layout = Layout(params.paths)
    settings = params.finetune
    rank, world = distributed()
    if settings.batch_size % world:
        raise stage.InputError(
            f"params.yaml: finetune.batch_size={settings.batch_size} must divide by the {world} processes"
        )
    seed_everything(settings.seed)
    device = pick_device(settings.device, "finetune.device")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    channels_last = params.backbone.channels_last
    classes = read_json(layout.features_meta)["classes"]
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})

    backbone = load_backbone(params.backbone)
    model = Classifier(backbone.model, backbone.num_features, len(classes))
    if settings.head_init == "probe":
        model.head.load_state_dict(load_file(layout.head_weights))  # LP-FT: start from the linear probe
    may_train = set().union(
        *(
            trainable_backbone_names(backbone, phase_strategy(settings, e), settings.unfreeze_last_n)
            for e in range(1, settings.epochs + 1)
        )
    )
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    background = tuple(params.clean.background)
    workers = worker_count(settings.num_workers)
    pin = device.type == "cuda"
    data = backbone.data
    train_rows, train_labels = load_split(manifest, "train", classes)
    train_set = ManifestImages(
        train_rows["path"].tolist(),
        train_labels,
        data.train_transform(settings.augment),
        background,
        data.train_decode_side(settings.augment),
        *training_copies(layout, train_rows, data, settings.augment, background, rank),
    )
    val_set = eval_images(*load_split(manifest, "val", classes), data, background, layout.resized_copies)
    # The shuffle (and each epoch's worker seeds) come from loader_rng, which checkpoints save; workers are
    # not persistent, so that an epoch's randomness depends on nothing a resumed run could not restore.
    loader_rng = torch.Generator().manual_seed(settings.seed)
    sampler = (
        DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed)
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
        drop_last=mixing(settings),  # mixup pairs need an even batch
    )
    val_loader = make_loader(val_set, settings.batch_size, workers, pin=pin)
    val_labels = torch.tensor(val_set.labels)

    optimizer = make_optimizer(parameter_groups(model, backbone, settings, may_train), settings)
    steps = settings.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(round(settings.warmup_epochs * len(train_loader)), steps)
    )
    mix = None
    if mixing(settings):
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mix = Mixup(
            mixup_alpha=settings.augment.mixup,
            cutmix_alpha=settings.augment.cutmix,
            label_smoothing=settings.label_smoothing,
            num_classes=len(classes),
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    plain_loss = nn.CrossEntropyLoss()

    checkpoint = layout.checkpoint
    resumed = load_checkpoint(
        checkpoint, model, optimizer, scheduler, loader_rng, fingerprint(params, layout)
    )
    if resumed:
        progress, best_state = resumed
    else:
        progress = Progress(fingerprint(params, layout))
        freeze(
            model, trainable_backbone_names(backbone, phase_strategy(settings, 1), settings.unfreeze_last_n)
        )
        initial = predict(model, val_loader, device, channels_last)
        progress.best_accuracy = float((initial.argmax(1) == val_labels).float().mean())
        best_state = copy.deepcopy(model.state_dict())
        log.info("epoch 0 (the starting model): val accuracy %.4f", progress.best_accuracy)

    started = time.perf_counter()
    epochs_this_run, phase, trained = 0, None, model
    while progress.epoch < settings.epochs and progress.epoch - progress.best_epoch < settings.patience:
        epoch = progress.epoch + 1
        if phase_strategy(settings, epoch) != phase:  # first epoch, or gradual's unfreezing
            phase = phase_strategy(settings, epoch)
            freeze(model, trainable_backbone_names(backbone, phase, settings.unfreeze_last_n))
            # DDP registers the trainable parameters when it wraps, so it wraps anew when they change.
            trained = model if world == 1 else DistributedDataParallel(model)
            trained = torch.compile(trained) if settings.compile else trained
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_loss = train_one_epoch(
            trained,
            train_loader,
            optimizer,
            scheduler,
            criterion,
            device,
            channels_last,
            settings.freeze_bn_stats,
            epoch,
            mix,
            on_batch,
        )
        logits = predict(model, val_loader, device, channels_last)
        val_accuracy = float((logits.argmax(1) == val_labels).float().mean())
        progress.history.append(
            {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "val_loss": round(float(plain_loss(logits, val_labels)), 6),
                "val_accuracy": round(val_accuracy, 6),
                "lr": scheduler.get_last_lr()[0],
            }
        )
        log.info("epoch %d (%s): %s", epoch, phase_strategy(settings, epoch), progress.history[-1])
        if val_accuracy > progress.best_accuracy:
            progress.best_accuracy, progress.best_epoch = val_accuracy, epoch
            best_state = copy.deepcopy(model.state_dict())
        progress.epoch = epoch
        epochs_this_run += 1
        if rank == 0:
            save_checkpoint(checkpoint, model, best_state, optimizer, scheduler, loader_rng, progress)
    if progress.epoch < settings.epochs:
        log.info("early stop: no validation gain for %d epochs", settings.patience)
    seconds = time.perf_counter() - started

    if rank == 0:
        write_outputs(
            layout,
            settings,
            model,
            best_state,
            progress,
            device,
            world,
        )
        shutil.rmtree(checkpoint, ignore_errors=True)  # the run finished: its resume point is spent
        train_set.copies.path.unlink(missing_ok=True)  # made for this run only
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    log.info(
        "best epoch %d, val accuracy %.4f, %.0f s, %.1f training images/s",
        progress.best_epoch,
        progress.best_accuracy,
        seconds,
        len(train_set) * epochs_this_run / max(seconds, 1e-9),
    )


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


def main() -> None:
    stage.run(finetune)


if __name__ == "__main__":
    main()
