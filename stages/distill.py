"""distill: a smaller student learns to match the fine-tuned network (the teacher), beside the same student
trained on the labels alone with the same budget (the ablation that says what distillation added).

- Teacher: the network finetune saved (`backbone.*`), frozen, in eval mode.
- Student: `distill.student` (any name the backbone registry accepts) with its pretrained weights and a probe
  head: a logistic regression on its own frozen embeddings of the training images (LP-FT, as finetune).
- Loss: `alpha` x cross-entropy on the labels (finetune's label smoothing) + `(1 - alpha)` x T^2 x KL(teacher
  || student) at temperature T (Hinton et al. 2015). Teacher and student see the same augmented view of every
  image in every step (function matching, Beyer et al. 2022): the view is cut once, at the larger of the two
  input sizes, and each network gets it resized and normalised its own way. Optional mixup mixes that view.
- Unlabelled images (`paths.unlabeled`, any subfolders, read-only) pass clean's checks and join the training
  set of the distilled student with the distillation term alone; one whose content equals or nearly equals a
  labelled image's (file sha256, decoded pixels, or near-duplicate hash within `clean.near_duplicate_distance`;
  reprotune/data/extra_images.py) is dropped and reported, so that no validation or test picture reaches training
  through the teacher.
- The label-only student is the same student, the same view, epochs and optimizer, and the loss with alpha = 1
  over the labelled images.

Training is finetune's (reprotune/training/loop.py `fit`, finetune's optimizer and training copies): early stopping
on validation accuracy, the best epoch kept, a checkpoint per student per epoch and resume with identical
weights, torchrun DDP, bf16 autocast and channels_last on CUDA. Off (`distill.enabled: false`, the default)
the stage writes a one-line record and trains nothing, so the DAG stays valid at no cost.

Outputs: `paths.distilled` (each student's weights, `distill.json`), `reports/distill_history.csv`, and
`reports/latency.json`: single-image CPU latency of teacher and student, a measurement (median of
`latency_runs`) and so the one output that differs between two identical runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from reprotune.data.dataconfig import DataConfig
from reprotune.data.datasets import eval_images, make_loader, worker_count
from reprotune.data.extra_images import Known, check_images
from reprotune.data.files import list_files
from reprotune.modalities.image.training_data import mixed_training_data
from reprotune.models.backbones import Backbone, load_backbone
from reprotune.models.classifier import Classifier, load_trained_classifier
from reprotune.models.inference import predict
from reprotune.models.model_card import TrainedCard
from reprotune.models.probe import chosen_C, fit_linear_head
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_json
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.input_checks import input_checks
from reprotune.pipeline.layout import STUDENTS, Layout
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.pipeline.params import Params
from reprotune.training.devices import pick_device
from reprotune.training.distributed import local_device, process_group
from reprotune.training.finetuning import UNLABELED, load_split, make_optimizer, schedule
from reprotune.training.loop import Placement, fit
from reprotune.training.seeding import seed_everything

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["student", "epoch", "train_loss", "val_loss", "val_accuracy", "val_score", "lr"]


# --- the loss --------------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
    mixed_with: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """alpha x CE(student, labels) over the labelled rows + (1 - alpha) x T^2 x KL(teacher_T || student_T)
    over every row (batch mean). Without a teacher, the label term alone. Rows labelled UNLABELED add only
    the KL term. `mixed_with` = (the other image's labels, lambda) when the images were mixed: the label
    term is lambda x CE(labels) + (1 - lambda) x CE(other labels), over rows where both are labelled."""
    student_logits = student_logits.float()
    other, lam = mixed_with if mixed_with else (labels, 1.0)
    labelled = (labels != UNLABELED) & (other != UNLABELED)
    if labelled.any():
        logits = student_logits[labelled]
        label_term = lam * F.cross_entropy(logits, labels[labelled], label_smoothing=label_smoothing)
        if lam < 1.0:
            label_term = label_term + (1 - lam) * F.cross_entropy(
                logits, other[labelled], label_smoothing=label_smoothing
            )
    else:
        label_term = student_logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) connected
    if teacher_logits is None:
        return label_term
    kd_term = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    return alpha * label_term + (1 - alpha) * kd_term


def as_input(images: torch.Tensor, view: DataConfig, target: DataConfig) -> torch.Tensor:
    """A batch cut for `view` (its size, its normalisation) as a network expecting `target` takes it:
    un-normalised, resized (antialiased bilinear) and normalised again; unchanged when the two agree."""
    if view.input_size == target.input_size and view.mean == target.mean and view.std == target.std:
        return images

    def stats(values: tuple) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)

    pixels = images * stats(view.std) + stats(view.mean)
    if view.input_size != target.input_size:
        size = (target.input_size, target.input_size)
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    return (pixels - stats(target.mean)) / stats(target.std)


def make_loss(
    teacher: nn.Module | None,
    view: DataConfig,
    student_data: DataConfig,
    teacher_data: DataConfig,
    params: Params,
    seen: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loop's loss_fn: one view per image (mixed first with `distill.mixup`), the student on
    it and, with a teacher, the teacher on the same view. `seen(student_input, teacher_input)` lets tests
    check what each network got."""
    settings = params.distill
    alpha = settings.alpha if teacher is not None else 1.0
    beta = torch.distributions.Beta(settings.mixup, settings.mixup) if settings.mixup > 0 else None

    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mixed_with = None
        if beta is not None:
            lam = float(beta.sample())
            images = lam * images + (1 - lam) * images.flip(0)
            mixed_with = (labels.flip(0), lam)
        student_input = as_input(images, view, student_data)
        teacher_logits, teacher_input = None, None
        if teacher is not None:
            teacher_input = as_input(images, view, teacher_data)
            with torch.no_grad():
                teacher_logits = teacher(teacher_input)
        if seen:
            seen(student_input, teacher_input)
        return distillation_loss(
            model(student_input),
            teacher_logits,
            labels,
            alpha,
            settings.temperature,
            params.finetune.label_smoothing,
            mixed_with,
        )

    return loss


# --- the unlabelled images -------------------------------------------------------------------------------


def unlabeled_images(params: Params, layout: Layout) -> tuple[pd.DataFrame, list[dict]]:
    """The usable images under `paths.unlabeled` (path, sha256) and every one dropped with its reason
    (reprotune/data/extra_images.py: clean's checks, no copy or near duplicate of a labelled image)."""
    folder = layout.unlabeled
    if not folder.is_dir():
        raise InputError(f"params.yaml: paths.unlabeled: {folder} is not a folder (keep it, empty, for none)")
    raw = layout.raw.resolve()
    if folder.resolve().is_relative_to(raw) or raw.is_relative_to(folder.resolve()):
        raise InputError(
            f"params.yaml: paths.unlabeled ({folder}) and paths.raw ({layout.raw}) overlap; ingest would read "
            "the unlabelled images as a class: keep the unlabelled folder outside the raw one"
        )
    rows = pd.DataFrame({"path": [path.as_posix() for path in list_files(folder)]}, columns=["path"])
    checked = check_images(rows, folder, params, Known.from_clean(layout, "labelled"), "unlabeled")
    return checked.kept, checked.dropped


# --- students --------------------------------------------------------------------------------------------


def student_backbone(params: Params) -> BackboneParams:
    """The student's registry entry; its input size defaults to the teacher's setting, then its own."""
    settings = params.distill
    return BackboneParams(
        name=settings.student,
        weights=settings.student_weights,
        input_size=settings.input_size or params.backbone.input_size,
        channels_last=params.backbone.channels_last,
    )


def view_config(student: DataConfig, teacher: DataConfig) -> DataConfig:
    """What the one augmented view is cut as: the student's preprocessing at the larger input size, so that
    neither network gets an upsampled picture when the other needs more pixels."""
    return DataConfig(
        input_size=max(student.input_size, teacher.input_size),
        interpolation=student.interpolation,
        mean=student.mean,
        std=student.std,
        crop_pct=student.crop_pct,
    )


def probe_head(
    params: Params,
    layout: Layout,
    backbone: Backbone,
    rows: pd.DataFrame,
    labels: list[int],
    classes: list[str],
    placement: Placement,
) -> dict[str, torch.Tensor]:
    """The student's starting head: train_head's logistic regression on the student's own embeddings."""
    images = eval_images(rows, labels, backbone.data, tuple(params.clean.background), layout.resized_copies)
    loader = make_loader(images, params.featurize.batch_size, worker_count(params.featurize.num_workers))
    model = backbone.model.to(placement.device)
    embeddings = predict(model, loader, placement.device, placement.channels_last, placement.bf16)
    weight, bias, _ = fit_linear_head(
        embeddings.numpy(), np.array(labels), params.train_head, len(classes), chosen_C(layout.head_meta)
    )
    return {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}


def student_settings(params: Params):
    """finetune's settings as the students train: every layer, the head from the probe, distill's budget."""
    return params.finetune.model_copy(
        update={
            "strategy": "full",
            "head_init": "probe",
            "epochs": params.distill.epochs,
            "patience": params.distill.patience,
            "lr": params.distill.lr,
            "seed": params.distill.seed,
        }
    )


def fingerprint(params: Params, layout: Layout, student: str, train: pd.DataFrame) -> str:
    """What a student's training depends on: a checkpoint made under anything else is not resumed."""
    digest = hashlib.sha256(student.encode())
    for part in (params.distill, params.finetune, params.backbone, params.train_head):
        digest.update(part.model_dump_json().encode())
    digest.update(json.dumps([list(params.clean.background), params.featurize.batch_size]).encode())
    digest.update(train[["path", "sha256", "target"]].to_csv(index=False).encode())
    for path in (layout.finetuned_weights, layout.split_manifest):
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- latency and outputs ---------------------------------------------------------------------------------


@torch.inference_mode()
def single_image_latency(model: nn.Module, side: int, runs: int, channels_last: bool) -> float:
    """Median milliseconds of one forward pass on one image, on the CPU, after warm-up passes."""
    model = model.cpu().eval()
    image = torch.randn(1, 3, side, side)
    image = image.to(memory_format=torch.channels_last) if channels_last else image
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for _ in range(min(10, runs)):
        model(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model(image)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def write_disabled(layout: Layout) -> None:
    with atomic_output(layout.distilled) as staging:
        staging.mkdir()
        (staging / layout.distill_meta.name).write_text(
            json.dumps({"enabled": False}) + "\n", encoding="utf-8"
        )
    write_history(layout, {})
    write_json(layout.latency, {})


def write_history(layout: Layout, histories: dict[str, list[dict]]) -> None:
    with atomic_output(layout.distill_history) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for student, history in histories.items():
            writer.writerows({"student": student} | row for row in history)


# --- the stage -------------------------------------------------------------------------------------------


def distill(params: Params, on_batch: Callable[[int, int], None] | None = None, seen=None) -> None:
    """`on_batch(epoch, batch)` is called before every training step and `seen(student_input,
    teacher_input)` on every distillation step (tests interrupt runs and check inputs with them)."""
    layout = Layout(params.paths)
    settings = params.distill
    if not settings.enabled:
        log.info("distill.enabled is false: nothing to train")
        write_disabled(layout)
        return
    with process_group() as (rank, world):
        if params.finetune.batch_size % world:
            raise InputError(
                f"params.yaml: finetune.batch_size={params.finetune.batch_size} must divide by the {world} processes"
            )
        device = local_device(pick_device(params.finetune.device, "params.yaml: finetune.device"))
        placement = Placement(device, params.backbone.channels_last)
        classes = read_json(layout.features_meta)["classes"]
        teacher, teacher_backbone = load_trained_classifier(
            params.backbone, layout.finetuned_weights, len(classes)
        )
        teacher.requires_grad_(False)
        teacher.to(device)
        if placement.channels_last:
            teacher.to(memory_format=torch.channels_last)

        manifest = layout.read_manifest(layout.split_manifest, {"label": str})
        train_rows, train_labels = load_split(manifest, "train", classes)
        val = load_split(manifest, "val", classes)
        unlabeled, dropped = unlabeled_images(params, layout)
        log.info("unlabeled: %d images used, %d dropped", len(unlabeled), len(dropped))
        labelled = train_rows[["path", "sha256"]].assign(target=train_labels)
        everything = pd.concat([labelled, unlabeled.assign(target=UNLABELED)], ignore_index=True)

        student_params = student_backbone(params)
        seed_everything(settings.seed)
        probe = probe_head(
            params, layout, load_backbone(student_params), train_rows, train_labels, classes, placement
        )
        students = STUDENTS if settings.label_only else STUDENTS[:1]
        results, histories, trained = {}, {}, {}
        for student in students:
            seed_everything(settings.seed)  # each student starts alike, however the other one ran
            backbone = load_backbone(student_params)
            model = Classifier(backbone.model, backbone.num_features, len(classes))
            model.head.load_state_dict(probe)
            model.to(device)
            if placement.channels_last:
                model.to(memory_format=torch.channels_last)
            view = view_config(backbone.data, teacher_backbone.data)
            train = everything if student == "distilled" else labelled
            data = mixed_training_data(
                params,
                layout,
                view,
                backbone.data,
                train,
                val,
                rank,
                world,
                placement,
                settings.seed,
                drop_last=settings.mixup > 0,  # as finetune: a batch of one would mix with itself
            )
            optimizer, scheduler = make_optimizer(
                model, backbone, student_settings(params), len(data.train_loader)
            )
            progress, best_state = fit(
                model,
                data,
                make_loss(
                    teacher if student == "distilled" else None,
                    view,
                    backbone.data,
                    teacher_backbone.data,
                    params,
                    seen,
                ),
                optimizer,
                scheduler,
                placement,
                schedule=schedule(student_settings(params)),
                checkpoint=layout.distill_checkpoint(student),
                fingerprint=fingerprint(params, layout, student, train),
                rank=rank,
                world=world,
                on_batch=on_batch,
            )
            model.load_state_dict(best_state)
            results[student] = {
                "best_epoch": progress.best_epoch,
                "best_val_accuracy": progress.best_accuracy,
                "epochs_run": progress.epoch,
                "labelled_images": len(labelled),
                "unlabeled_images": len(train) - len(labelled),
                "parameters": parameter_count(model),
            }
            histories[student] = progress.history
            trained[student] = model
            if rank == 0:  # made for this student's run alone (finetune's training copies)
                data.train_loader.dataset.copies.path.unlink(missing_ok=True)
        if rank == 0:
            write_outputs(
                params,
                layout,
                teacher,
                teacher_backbone.data,
                student_params,
                backbone.data,
                trained,
                results,
                histories,
                dropped,
            )
            for student in students:
                shutil.rmtree(layout.distill_checkpoint(student), ignore_errors=True)


def write_outputs(
    params: Params,
    layout: Layout,
    teacher: nn.Module,
    teacher_data: DataConfig,
    student: BackboneParams,
    student_data: DataConfig,
    trained: dict[str, nn.Module],
    results: dict,
    histories: dict,
    dropped: list[dict],
) -> None:
    card = TrainedCard(
        layout.modality, student, read_json(layout.features_meta)["classes"], input_checks(params)
    )
    with atomic_output(layout.distilled) as staging:
        staging.mkdir()
        for name, model in trained.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                staging / layout.student_weights(name).name,
            )
            # what loading the student needs, anywhere (reprotune predict --model models/distilled/<name>.safetensors)
            card.write(staging / layout.student_weights(name).name)
            results[name]["megabytes"] = round(
                (staging / layout.student_weights(name).name).stat().st_size / 2**20, 3
            )
        record = {
            "enabled": True,
            "teacher": {
                "backbone": params.backbone.name,
                "input_size": teacher_data.input_size,
                "parameters": parameter_count(teacher),
                "megabytes": round(layout.finetuned_weights.stat().st_size / 2**20, 3),
            },
            # all that evaluate needs to rebuild the students, so that it reads no distill params
            "student": {
                "backbone": student.name,
                "input_size": student_data.input_size,
                "registry": student.model_dump(mode="json"),
            },
            "students": results,
            "unlabeled": {"folder": params.paths.unlabeled, "dropped": dropped},
        }
        (staging / layout.distill_meta.name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    write_history(layout, histories)
    runs, channels_last = params.distill.latency_runs, params.backbone.channels_last
    teacher_ms = single_image_latency(teacher, teacher_data.input_size, runs, channels_last)
    student_ms = single_image_latency(trained["distilled"], student_data.input_size, runs, channels_last)
    latency = {
        "threads": torch.get_num_threads(),
        "runs": runs,
        "teacher_ms": round(teacher_ms, 3),
        "student_ms": round(student_ms, 3),
        "student_speedup": round(teacher_ms / student_ms, 3),
    }
    write_json(layout.latency, latency)
    log.info("single-image CPU latency: %s", latency)


def main() -> None:
    stage.run(distill)


if __name__ == "__main__":
    main()
