"""The trained network: backbone plus linear head, as finetune trains it and every later stage loads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from reprotune.models.backbones import Backbone, load_backbone
from reprotune.pipeline.params import Backbone as BackboneParams


class Classifier(nn.Module):
    """Backbone plus a linear head: what finetune trains and evaluate applies."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def image_architecture(params: BackboneParams) -> Backbone:
    return load_backbone(params, pretrained=False)


def load_trained_classifier(
    params: BackboneParams,
    weights: Path,
    num_classes: int,
    load: Callable[[BackboneParams], Backbone] = image_architecture,
) -> tuple[Classifier, Backbone]:
    """The network finetune saved: architecture and preprocessing from the registry (`load`: the modality's
    encoder architecture, reprotune/modalities/encoding.py), every weight from `weights`, so no pretrained
    file is read. Returns it in eval mode, with its Backbone (for the preprocessing)."""
    backbone = load(params)
    model = Classifier(backbone.model, backbone.num_features, num_classes)
    model.load_state_dict(load_file(weights))
    return model.eval(), backbone
