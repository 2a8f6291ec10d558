"""finetune: train backbone + head on the images, the head starting from train_head's (LP-FT).

What trains (`finetune.strategy`): `frozen` (head only, on augmented images), `last_n` (also the backbone's
last N layer groups, timm's own grouping), `full`, or `gradual` (head only for `gradual_frozen_epochs`, then
everything, as fastai's fine_tune). BatchNorm layers with frozen weights keep their running statistics, and
with `freeze_bn_stats` all of them do. AdamW or SGD; the backbone learns at `lr x backbone_lr_factor`,
optionally decayed per layer group away from the head; no weight decay on norms and biases; linear warm-up
then cosine decay per step. The loss weighs classes as `class_weights` says (reprotune/models/imbalance.py).
Early stopping on the validation score (`selection_metric`); epoch 0 (the starting model) is a candidate, and
the best epoch's weights are saved. CUDA trains under bf16 autocast.

Every epoch crops from the same pictures, so each training image larger than the training side is decoded
once per run, before the first epoch, and kept resized to that side (reprotune/data/resized.py); the epochs then
decode those small JPEGs. Validation reads clean's eval-sized copies.

Texts (the modality ingest recorded) train the same way through the same loop: the sentence encoder and the head,
on shuffled token-id batches padded to their longest text (reprotune/models/text_encoders.py); augmentation,
mixup and BatchNorm settings do not apply to them.

Resumable: after every epoch the full training state (weights, optimizer, scheduler, RNG states, best model
so far) goes to `paths.checkpoints`; a run that is interrupted resumes there on the next `dvc repro`, as long
as nothing it depends on changed, and ends with the same weights as an uninterrupted run.

Distributed: `torchrun --nproc_per_node N -m stages.finetune` trains data-parallel (DDP: NCCL on CUDA, gloo
on CPU). `batch_size` stays the global batch (each process takes batch_size / N), so the learning rate and
the results stay comparable with a single-process run; rank 0 alone writes outputs and checkpoints.

The run itself is reprotune/training/finetune_run.py's (tune's trials train through it too): the recipe in
reprotune/training/finetuning.py, the epoch loop, early stopping, resume and DDP wrapping in
reprotune/training/loop.py. This module writes what the run produced.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Callable

import torch
from safetensors.torch import save_file

from reprotune.models.classifier import Classifier
from reprotune.models.model_card import TrainedCard
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, write_text
from reprotune.pipeline.input_checks import input_checks
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Finetune, Params
from reprotune.reporting.markdown import lines_of
from reprotune.training.checkpoints import Progress
from reprotune.training.distributed import process_group
from reprotune.training.finetune_run import run_finetune
from reprotune.training.loop import TrainingData

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_score", "lr"]


def finetune(params: Params, on_batch: Callable[[int, int], None] | None = None) -> None:
    """`on_batch(epoch, batch)` is called before every training step (tests interrupt runs with it)."""
    layout = Layout(params.paths)
    with process_group() as (rank, world):
        run = run_finetune(params, layout, rank, world, layout.checkpoint, on_batch)
        if rank == 0:
            card = TrainedCard(layout.modality, params.backbone, run.classes, input_checks(params))
            write_outputs(
                layout, params.finetune, run.model, run.best_state, run.progress, run.device, world, card
            )
            remove_run_files(layout, run.data)


# --- resume and outputs ----------------------------------------------------------------------------------


def write_outputs(
    layout: Layout,
    settings: Finetune,
    model: Classifier,
    best_state: dict,
    progress: Progress,
    device: torch.device,
    world: int,
    card: TrainedCard,
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
        "selection_metric": settings.selection_metric,
        "best_val_score": progress.best_score,
        "best_val_accuracy": progress.best_accuracy,
        "best_val_loss": progress.best_loss,
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
        card.write(
            staging / layout.finetuned_weights.name
        )  # what loading it needs, anywhere (reprotune predict)
    with atomic_output(layout.finetune_history) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(progress.history)
    write_text(layout.report_section("finetune"), lines_of([section(settings, summary)]))


def section(settings: Finetune, summary: dict) -> str:
    """finetune's part of report.md: what trained, how long, and which epoch won."""
    return (
        f"- Fine-tuned: strategy `{settings.strategy}`"
        + (f" (last {settings.unfreeze_last_n} layer groups)" if settings.strategy == "last_n" else "")
        + f", {summary['epochs_run']} of {settings.epochs} epochs on {summary['device']}, lr {settings.lr}"
        f" (backbone x{settings.backbone_lr_factor}), batch {settings.batch_size}, class weights "
        f"`{settings.class_weights}`; best validation epoch {summary['best_epoch']} by "
        f"{settings.selection_metric.replace('_', ' ')} {summary['best_val_score']:.4f} (0 = the probe's head "
        "unchanged)."
    )


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
