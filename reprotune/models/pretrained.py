"""A pretrained encoder as every stage uses it (`Backbone`: the network, its embedding width, its
preprocessing, its layer groups) and loading a weights file into one. Image backbones (reprotune/models/backbones.py)
and sentence encoders (reprotune/models/text_encoders.py) both build on this, so neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.hashing import sha256_of_file


@dataclass
class Backbone:
    """`model(images)` returns one embedding of `num_features` per image."""

    model: nn.Module
    num_features: int
    data: Any  # DataConfig; a sentence encoder's TextConfig
    layer_groups: list[list[str]]  # parameter names, input side first: what `last_n` unfreezes from the end
    weights: str  # where the weights came from, with their sha256 when read from a file


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return state


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load by name when the names match; otherwise in order, checking every shape.

    The in-order path is what maps the shipped EfficientNet-Lite0 file (efficientnet_pytorch names) onto
    timm's tf_efficientnet_lite0: same tensors, same order, different names.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if set(expected) <= set(given):
        mapped = {k: given[k] for k in expected}
    elif len(expected) == len(given):
        mapped = dict(zip(expected, given.values(), strict=True))
    else:
        missing = sorted(set(expected) - set(given))[:3]
        raise InputError(
            f"{source}: does not fit {type(model).__name__}: {len(given)} tensors for {len(expected)}, "
            f"names differ (missing e.g. {missing})"
        )
    for name, tensor in mapped.items():
        if tensor.shape != expected[name].shape:
            raise InputError(
                f"{source}: tensor for {name} has shape {tuple(tensor.shape)}, the model needs "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(mapped, strict=False)


def file_weights(model: nn.Module, path: Path, label: str | None = None) -> str:
    if not path.is_file():
        raise InputError(f"params.yaml: backbone.weights: file {path} not found")
    load_matching(model, read_state_dict(path), str(path))
    return f"{label or path} (sha256 {sha256_of_file(path)})"
