"""Which device a stage runs on, and how a batch gets there."""

from __future__ import annotations

import torch

from reprotune.pipeline.errors import InputError


def pick_device(setting: str, key: str) -> torch.device:
    """`auto` is CUDA when visible, else the CPU; `cuda` without a visible GPU is an error naming `key`."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise InputError(f"params.yaml: {key}: cuda was asked for but no CUDA device is visible")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return (
        images.contiguous(memory_format=torch.channels_last) if channels_last and images.ndim == 4 else images
    )
