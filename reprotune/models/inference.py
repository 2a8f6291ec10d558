"""The one inference loop: a model over an in-order loader, batch by batch. featurize (embeddings), finetune's
validation, evaluate (logits) and whatever serves the model next all run it, so that they agree on every
number."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from reprotune.reporting.progress import progress
from reprotune.training.devices import to_device


@dataclass(frozen=True)
class Inference:
    """How a model runs over a split's rows (reprotune/modalities/encoding.py): `pad_to` as in `outputs`,
    `background` the colour transparent images are flattened onto (images only)."""

    device: torch.device
    batch_size: int
    workers: int | str
    channels_last: bool
    bf16: bool = False
    pad_to: int | None = None
    background: Sequence[int] | str = (255, 255, 255)


@torch.inference_mode()
def outputs(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool,
    bf16: bool = False,
    pad_to: int | None = None,
    desc: str | None = None,
) -> Iterator[torch.Tensor]:
    """The model's outputs (float32, on the CPU), one tensor per batch, in the loader's order, with the model
    in eval mode. `pad_to` pads a short last batch with zeros to that size (and drops the padding's outputs):
    CPU kernels differ with the batch shape (a batch of 1 differs from a batch of 64 by ~5e-6), so one shape
    for every pass makes an image's output independent of the images it happens to be batched with. `desc`
    shows a progress bar."""
    model.eval()
    for images, _ in progress(loader, desc, unit="batch") if desc else loader:
        count = len(images)
        if pad_to is not None and count < pad_to:
            images = torch.cat([images, images.new_zeros((pad_to - count, *images.shape[1:]))])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            batch = model(to_device(images, device, channels_last))
        yield batch[:count].float().cpu()


def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool,
    bf16: bool = False,
    desc: str | None = None,
) -> torch.Tensor:
    """Every output of the loader's images, in order, as one tensor (`desc`: with progress shown)."""
    return torch.cat(list(outputs(model, loader, device, channels_last, bf16, desc=desc)))
