"""finetune: train backbone + head on the images, starting the head from train_head (LP-FT).

`finetune.strategy` picks what trains: `frozen` (head only, on augmented images), `last_n` (the backbone's
last N layer groups too) or `full`. BatchNorm layers whose weights are frozen keep their running statistics,
and so do all of them with `freeze_bn_stats`.
AdamW with the backbone at `lr x backbone_lr_factor`, no weight decay on norms and biases, linear warm-up
then cosine decay per step; early stopping on validation accuracy; the best epoch's weights are saved.
On CUDA it trains under bf16 autocast; channels_last follows `backbone.channels_last`.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import time

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reprotune import stage
from reprotune.backbones import Backbone, Classifier, load_backbone, pick_device
from reprotune.datasets import ManifestImages, make_loader, worker_count
from reprotune.layout import Layout, atomic_output, read_json
from reprotune.params import Finetune, Params

log = logging.getLogger(__name__)


def trainable_backbone_names(backbone: Backbone, strategy: str, last_n: int) -> set[str]:
    if strategy == "frozen":
        return set()
    groups = backbone.layer_groups if strategy == "full" else backbone.layer_groups[-last_n:]
    return {name for group in groups for name in group}


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


def parameter_groups(model: Classifier, settings: Finetune) -> list[dict]:
    """Head at lr, backbone at lr x factor; no weight decay on 1-d tensors (norm scales, biases)."""
    groups = []
    for part, lr in ((model.head, settings.lr), (model.backbone, settings.lr * settings.backbone_lr_factor)):
        trainable = [p for p in part.parameters() if p.requires_grad]
        decayed = [p for p in trainable if p.ndim > 1]
        plain = [p for p in trainable if p.ndim <= 1]
        groups += [
            {"params": decayed, "lr": lr, "weight_decay": settings.weight_decay},
            {"params": plain, "lr": lr, "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]


def warmup_cosine(warmup_steps: int, total_steps: int):
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
    model: Classifier,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    criterion: nn.Module,
    device: torch.device,
    channels_last: bool,
    freeze_bn_stats: bool,
    epoch: int,
) -> float:
    train_mode(model, freeze_bn_stats)
    total, seen = 0.0, 0
    for images, labels in tqdm(loader, desc=f"finetune epoch {epoch}", unit="batch", disable=None):
        images, labels = to_device(images, device, channels_last), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(labels)
        seen += len(labels)
    return total / seen


@torch.no_grad()
def predict(model: Classifier, loader: DataLoader, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Logits (float32, on the CPU) for every image of the loader, in order."""
    model.eval()
    outputs = []
    for images, _ in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(model(to_device(images, device, channels_last)).float().cpu())
    return torch.cat(outputs)


def load_split(manifest: pd.DataFrame, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
    rows = manifest[manifest["split"] == split]
    index = {label: i for i, label in enumerate(classes)}
    return rows["path"].tolist(), [index[label] for label in rows["label"]]


def seed_everything(seed: int) -> None:
    """timm's crops draw from `random`, torchvision's jitter from torch: seed both (and numpy)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def finetune(params: Params) -> None:
    layout = Layout(params.paths)
    settings = params.finetune
    seed_everything(settings.seed)
    device = pick_device(settings.device)
    channels_last = params.backbone.channels_last
    classes = read_json(layout.features_meta)["classes"]
    manifest = pd.read_csv(layout.split_manifest, dtype={"label": str}, keep_default_na=False)

    backbone = load_backbone(params.backbone)
    model = Classifier(backbone.model, backbone.num_features, len(classes))
    model.head.load_state_dict(load_file(layout.head_weights))  # LP-FT: start from the linear probe
    trainable = trainable_backbone_names(backbone, settings.strategy, settings.unfreeze_last_n)
    freeze(model, trainable)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    background = tuple(params.clean.background)
    workers = worker_count(settings.num_workers)
    pin = device.type == "cuda"
    train_set = ManifestImages(
        *load_split(manifest, "train", classes),
        backbone.data.train_transform(settings.augment),
        background,
    )
    val_set = ManifestImages(
        *load_split(manifest, "val", classes), backbone.data.eval_transform(), background
    )
    train_loader = make_loader(
        train_set, settings.batch_size, workers, shuffle=True, seed=settings.seed, pin=pin
    )
    val_loader = make_loader(val_set, settings.batch_size, workers, pin=pin)
    val_labels = torch.tensor(val_set.labels)

    optimizer = torch.optim.AdamW(parameter_groups(model, settings))
    steps = settings.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(round(settings.warmup_epochs * len(train_loader)), steps)
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    plain_loss = nn.CrossEntropyLoss()

    initial_logits = predict(model, val_loader, device, channels_last)
    best_accuracy = float((initial_logits.argmax(1) == val_labels).float().mean())
    best_state, best_epoch, history = copy.deepcopy(model.state_dict()), 0, []
    log.info("epoch 0 (the linear probe's head): val accuracy %.4f", best_accuracy)
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        train_loss = train_one_epoch(
            model,
            train_loader,
            optimizer,
            scheduler,
            criterion,
            device,
            channels_last,
            settings.freeze_bn_stats,
            epoch,
        )
        logits = predict(model, val_loader, device, channels_last)
        val_accuracy = float((logits.argmax(1) == val_labels).float().mean())
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "val_loss": round(float(plain_loss(logits, val_labels)), 6),
                "val_accuracy": round(val_accuracy, 6),
                "lr": scheduler.get_last_lr()[0],
            }
        )
        log.info("epoch %d: %s", epoch, history[-1])
        if val_accuracy > best_accuracy:
            best_accuracy, best_epoch, best_state = val_accuracy, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            log.info("early stop: no validation gain for %d epochs", settings.patience)
            break
    seconds = time.perf_counter() - started

    summary = {
        "device": device.type,
        "strategy": settings.strategy,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "best_epoch": best_epoch,
        "best_val_accuracy": best_accuracy,
        "epochs_run": len(history),
        "seconds": round(seconds, 1),
        "train_images_per_second": round(len(train_set) * len(history) / seconds, 1),
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
        writer = csv.DictWriter(stream, fieldnames=["epoch", "train_loss", "val_loss", "val_accuracy", "lr"])
        writer.writeheader()
        writer.writerows(history)
    log.info("best epoch %d, val accuracy %.4f, %.0f s", best_epoch, best_accuracy, seconds)


def main() -> None:
    stage.run(finetune)


if __name__ == "__main__":
    main()
