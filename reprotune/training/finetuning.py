"""The fine-tuning recipe that finetune, distill and adapt share: the model (pretrained backbone + linear
head, the head from train_head's probe for LP-FT), which parameters train in each phase of a strategy,
their parameter groups (discriminative learning rates, layer decay, no weight decay on norms and biases),
the optimizer with warm-up and cosine decay, the loss (class-weighted as `class_weights` says, with timm's
mixup/cutmix), and the fingerprint a
resumable run is checked against. The training data are the modality's (reprotune/modalities/image/training_data.py,
reprotune/modalities/text/training_data.py); the loop is reprotune/training/loop.py's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import nn

from reprotune.models.backbones import Backbone, load_backbone
from reprotune.models.classifier import Classifier
from reprotune.models.imbalance import class_weights
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.pipeline.params import Finetune, Params
from reprotune.training.loop import (
    Placement,
    Schedule,
    warmup_cosine,
)

UNLABELED = -1  # the label of an image without one (distill's unlabelled images, adapt's target images)


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
    params: Params,
    layout: Layout,
    num_classes: int,
    placement: Placement,
    load: Callable[[BackboneParams], Backbone] = load_backbone,
) -> tuple[Backbone, Classifier]:
    """The pretrained backbone (`load`: the modality's encoder, reprotune/modalities/encoding.py) with a
    linear head, the head from train_head's probe (LP-FT) or fresh."""
    backbone = load(params.backbone)
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


def mixing(settings: Finetune) -> bool:
    return settings.augment.mixup > 0 or settings.augment.cutmix > 0


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against mixed (soft) targets, each example weighted by its target's mix of the class
    weights and the batch normalised by the weights' sum, as torch's weighted cross-entropy normalises hard
    targets. With all weights 1 it is timm's SoftTargetCrossEntropy."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = torch.sum(-target * nn.functional.log_softmax(logits, dim=-1), dim=-1)
        weights = target @ self.weight.to(target.dtype)
        return torch.sum(weights * losses) / torch.sum(weights)


def class_weight_tensor(settings: Finetune, num_classes: int, train_labels: list[int]) -> torch.Tensor:
    """Each class's weight in the loss for training labels `train_labels` (all 1 with `none`)."""
    weights = class_weights(
        np.asarray(train_labels), num_classes, settings.class_weights, settings.class_weight_beta
    )
    return torch.tensor(weights, dtype=torch.float32)


def hard_target_loss(settings: Finetune, weight: torch.Tensor) -> nn.CrossEntropyLoss:
    """Cross-entropy on class indices, label-smoothed, classes weighted by `weight` (none: plain)."""
    weighted = weight if settings.class_weights != "none" else None
    return nn.CrossEntropyLoss(weight=weighted, label_smoothing=settings.label_smoothing)


def make_criterion(
    settings: Finetune, num_classes: int, train_labels: list[int]
) -> tuple[nn.Module, Callable | None]:
    """The training loss, its classes weighted for `train_labels` as `settings.class_weights` says, and,
    with mixup or cutmix, timm's Mixup that mixes each batch first. Move the loss to the model's device."""
    weight = class_weight_tensor(settings, num_classes, train_labels)
    if not mixing(settings):
        return hard_target_loss(settings, weight), None
    from timm.data import Mixup

    mix = Mixup(
        mixup_alpha=settings.augment.mixup,
        cutmix_alpha=settings.augment.cutmix,
        label_smoothing=settings.label_smoothing,
        num_classes=num_classes,
    )
    return SoftTargetCrossEntropy(weight), mix


def schedule(settings: Finetune) -> Schedule:
    """The training loop's schedule from finetune's settings, or from a copy of them (distill's students)."""
    return Schedule(
        settings.epochs,
        settings.patience,
        settings.freeze_bn_stats,
        settings.compile,
        settings.selection_metric,
    )


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
