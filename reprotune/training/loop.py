"""The one training loop, in the shape of torchvision's reference script: `train_one_epoch`, `evaluate`, and
`fit`, the epoch loop around them (early stopping on the validation score, `finetune.selection_metric`: accuracy,
macro-F1 or balanced accuracy, ties broken by validation loss, with the starting model as epoch 0,
the best epoch's weights kept, a checkpoint after every epoch and resume from it, DDP and torch.compile
wrapping). finetune drives it with a supervised loss; a stage with another objective (distillation, domain
adaptation) passes its own `loss_fn` and reuses the rest.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from reprotune.models.imbalance import selection_score
from reprotune.models.inference import predict
from reprotune.reporting.progress import duration
from reprotune.reporting.progress import progress as shown_progress
from reprotune.training import checkpoints
from reprotune.training.checkpoints import Progress
from reprotune.training.devices import to_device

log = logging.getLogger(__name__)

# loss_fn(model, images, labels) -> the batch's loss; images and labels are already on the device.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Placement:
    """Where the tensors go and in which form: CUDA trains and infers under bf16 autocast."""

    device: torch.device
    channels_last: bool

    @property
    def bf16(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class TrainingData:
    """What `load_data` of a training stage returns: shuffled training batches (their order drawn from
    `loader_rng`, which checkpoints save) and in-order validation batches with their labels."""

    train_loader: DataLoader
    loader_rng: torch.Generator
    sampler: Sampler | None  # set_epoch(epoch) before each epoch (DistributedSampler, ClassBalancedSampler)
    val_loader: DataLoader
    val_labels: torch.Tensor


@dataclass(frozen=True)
class Schedule:
    epochs: int
    patience: int  # epochs without a validation gain before stopping
    freeze_bn_stats: bool
    compile: bool
    metric: str  # what picks the best epoch: accuracy, macro_f1 or balanced_accuracy (models/imbalance.py)


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    score: float  # the schedule's metric


def improves(validation: Evaluation, progress: Progress) -> bool:
    """A better score, or the same with a lower loss. On a few dozen validation images, the score moves in
    steps of a few points and ties between epochs are the rule; by the score alone the earliest of them
    (often the starting model, epoch 0) would win however much better the later one fits."""
    return validation.score > progress.best_score or (
        validation.score == progress.best_score and validation.loss < progress.best_loss
    )


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


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def supervised_loss(criterion: nn.Module, mix: Callable | None = None) -> LossFn:
    """`criterion` on the model's logits; `mix` (timm's Mixup) mixes images and labels first."""

    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if mix:
            images, labels = mix(images, labels)
        return criterion(model(images), labels)

    return loss


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    placement: Placement,
    *,
    epoch: int,
    freeze_bn_stats: bool,
    on_batch: Callable[[int, int], None] | None = None,
    estimate_for_epochs: int = 0,
) -> float:
    """One pass over `loader`, one optimizer and scheduler step per batch; returns the mean loss.
    `on_batch(epoch, batch)` is called before every step (tests interrupt runs with it). With
    `estimate_for_epochs`, the time those epochs will take is logged after the first batches."""
    train_mode(model, freeze_bn_stats)
    total, seen = 0.0, 0
    timed_from = None
    for batch, (images, labels) in enumerate(shown_progress(loader, f"epoch {epoch}", unit="batch")):
        if batch == 1:
            timed_from = time.perf_counter()  # batch 0 pays for warm-up (allocation, worker start, compile)
        elif estimate_for_epochs and timed_from and batch == min(ESTIMATE_AFTER_BATCHES, len(loader) - 1):
            log_estimate((time.perf_counter() - timed_from) / (batch - 1), len(loader), estimate_for_epochs)
        if on_batch:
            on_batch(epoch, batch)
        images = to_device(images, placement.device, placement.channels_last)
        labels = labels.to(placement.device)
        with torch.autocast(placement.device.type, dtype=torch.bfloat16, enabled=placement.bf16):
            loss = loss_fn(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(images)
        seen += len(images)
    return total / seen


ESTIMATE_AFTER_BATCHES = 11


def log_estimate(seconds_per_batch: float, batches: int, epochs: int) -> None:
    epoch = seconds_per_batch * batches
    log.info(
        "estimate: %.2f s per batch, %s per epoch of %d batches; %s for the %d epoch(s) of this run at most "
        "(training alone; each epoch's validation adds to it, early stopping may end it sooner)",
        seconds_per_batch,
        duration(epoch),
        batches,
        duration(epoch * epochs),
        epochs,
    )


def evaluate(
    model: nn.Module, loader: DataLoader, labels: torch.Tensor, placement: Placement, metric: str
) -> Evaluation:
    """Accuracy, (unsmoothed, unweighted) cross-entropy and `metric` on an in-order loader whose labels are
    `labels`."""
    logits = predict(model, loader, placement.device, placement.channels_last, placement.bf16)
    predicted = logits.argmax(1)
    return Evaluation(
        accuracy=float((predicted == labels).float().mean()),
        loss=float(nn.functional.cross_entropy(logits, labels)),
        score=selection_score(metric, labels.numpy(), predicted.numpy()),
    )


def fit(
    model: nn.Module,
    data: TrainingData,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    placement: Placement,
    *,
    schedule: Schedule,
    checkpoint: Path,
    fingerprint: str,
    rank: int,
    world: int,
    phase_of: Callable[[int], str] = lambda epoch: "train",
    enter_phase: Callable[[str], None] = lambda phase: None,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[int, Evaluation], None] | None = None,
) -> tuple[Progress, dict]:
    """Train until `schedule.epochs` or `schedule.patience` epochs without a validation gain; return the
    progress and the best epoch's state dict (epoch 0, the model as given, is a candidate).

    `phase_of(epoch)` names what trains in an epoch; when it changes, `enter_phase(phase)` sets it up (which
    parameters train) and the model is wrapped anew for DDP, which registers trainable parameters when it
    wraps. A checkpoint made under the same `fingerprint` (rank 0 writes one after every epoch) is resumed;
    with it, the run ends with the same weights as an uninterrupted one. `on_epoch(epoch, validation)` is
    called after each epoch's validation (a tuning trial reports to its pruner there)."""
    resumed = checkpoints.load(checkpoint, model, optimizer, scheduler, data.loader_rng, fingerprint)
    if resumed:
        progress, best_state = resumed
    else:
        progress = Progress(fingerprint)
        enter_phase(phase_of(1))
        start = evaluate(model, data.val_loader, data.val_labels, placement, schedule.metric)
        progress.best_score, progress.best_loss, progress.best_accuracy = (
            start.score,
            start.loss,
            start.accuracy,
        )
        best_state = copy.deepcopy(model.state_dict())
        log.info(
            "epoch 0 (the starting model): val %s %.4f, accuracy %.4f",
            schedule.metric,
            start.score,
            start.accuracy,
        )

    started = time.perf_counter()
    epochs_this_run, phase, trained = 0, None, model
    while progress.epoch < schedule.epochs and progress.epoch - progress.best_epoch < schedule.patience:
        epoch = progress.epoch + 1
        if phase_of(epoch) != phase:  # the first epoch of this run, or a new phase
            phase = phase_of(epoch)
            enter_phase(phase)
            trained = model if world == 1 else DistributedDataParallel(model)
            trained = torch.compile(trained) if schedule.compile else trained
        if data.sampler is not None:
            data.sampler.set_epoch(epoch)
        train_loss = train_one_epoch(
            trained,
            data.train_loader,
            loss_fn,
            optimizer,
            scheduler,
            placement,
            epoch=epoch,
            freeze_bn_stats=schedule.freeze_bn_stats,
            on_batch=on_batch,
            estimate_for_epochs=schedule.epochs - progress.epoch if epochs_this_run == 0 and rank == 0 else 0,
        )
        validation = evaluate(model, data.val_loader, data.val_labels, placement, schedule.metric)
        progress.history.append(
            {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "val_loss": round(validation.loss, 6),
                "val_accuracy": round(validation.accuracy, 6),
                "val_score": round(validation.score, 6),
                "lr": scheduler.get_last_lr()[0],
            }
        )
        log.info("epoch %d (%s): %s", epoch, phase, progress.history[-1])
        if improves(validation, progress):
            progress.best_score, progress.best_loss = validation.score, validation.loss
            progress.best_accuracy, progress.best_epoch = validation.accuracy, epoch
            best_state = copy.deepcopy(model.state_dict())
        progress.epoch = epoch
        epochs_this_run += 1
        if rank == 0:
            checkpoints.save(checkpoint, model, best_state, optimizer, scheduler, data.loader_rng, progress)
        if on_epoch:
            on_epoch(epoch, validation)
    if progress.epoch < schedule.epochs:
        log.info("early stop: no validation gain for %d epochs", schedule.patience)
    seconds = time.perf_counter() - started
    log.info(
        "best epoch %d, val %s %.4f (accuracy %.4f), %.0f s, %.1f training images/s",
        progress.best_epoch,
        schedule.metric,
        progress.best_score,
        progress.best_accuracy,
        seconds,
        len(data.train_loader.dataset) * epochs_this_run / max(seconds, 1e-9),
    )
    return progress, best_state
