"""What a backbone name means before any weights exist: its preprocessing (timm's `resolve_data_config`
fields) and the names the registry accepts.

clean needs the eval side to make its resized copies; it must not depend on weight loading or on the
trained model, so this module loads no weights and fetches nothing.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import timm
import timm.data
import torch
from PIL import Image
from torchvision.transforms import Compose, Normalize

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Augment

TORCHVISION_PREFIX = "torchvision:"
TINY_TEST = "reprotune-tiny-test"


@dataclass(frozen=True)
class DataConfig:
    """The preprocessing a backbone was pretrained with (timm's `resolve_data_config` fields)."""

    input_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float

    @property
    def eval_decode_side(self) -> int:
        """The shorter side the eval transform resizes to before its centre crop (timm's rule)."""
        return math.floor(self.input_size / self.crop_pct)

    def train_decode_side(self, augment: Augment) -> int:
        """A side that leaves the smallest random-resized crop (area `scale[0]`, aspect up to 4:3) at least
        `input_size` pixels across, so reduced-scale decoding never upsamples a crop."""
        return math.ceil(self.input_size / math.sqrt(min(augment.scale)) * math.sqrt(4 / 3))

    def eval_transform(self) -> Callable:
        return EvalTransform(
            timm.data.create_transform(
                input_size=(3, self.input_size, self.input_size),
                interpolation=self.interpolation,
                mean=self.mean,
                std=self.std,
                crop_pct=self.crop_pct,
                is_training=False,
            )
        )

    def train_transform(self, augment: Augment) -> Callable:
        return timm.data.create_transform(
            input_size=(3, self.input_size, self.input_size),
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            is_training=True,
            scale=augment.scale,
            hflip=augment.hflip,
            color_jitter=augment.color_jitter,
            auto_augment=augment.auto_augment,
        )


class EvalTransform:
    """timm's eval transform with its last two steps (to tensor, normalise) done as one table lookup on RGB
    pictures: each channel's 256 values are computed once with the float32 operations those steps apply to
    every pixel (divide by 255, subtract the mean, divide by the std), so the tensor has the same bits at
    about a third of their cost, which on small inputs is as much as the resize. Other modes go through
    timm's own steps, which refuse them as before (every stage converts pictures to RGB first)."""

    def __init__(self, timm_transform: Compose) -> None:
        *geometry, self.to_tensor, self.normalize = timm_transform.transforms
        if not isinstance(self.normalize, Normalize) or "ToTensor" not in type(self.to_tensor).__name__:
            raise ValueError(f"not an eval transform ending in to-tensor and normalise: {timm_transform}")
        self.geometry = Compose(geometry)
        mean = torch.as_tensor(self.normalize.mean, dtype=torch.float32).view(-1, 1)
        std = torch.as_tensor(self.normalize.std, dtype=torch.float32).view(-1, 1)
        levels = torch.arange(256, dtype=torch.float32).div(255).expand(3, 256)
        self.table = levels.sub(mean).div(std).numpy()  # (channel, level)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        picture = self.geometry(image)
        if picture.mode != "RGB":
            return self.normalize(self.to_tensor(picture))
        pixels = np.asarray(picture)
        out = np.empty((3, *pixels.shape[:2]), np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[..., channel], out=out[channel])
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"EvalTransform({self.geometry}, {self.normalize})"


def unknown_backbone(name: str, known: list[str]) -> InputError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return InputError(
        f"params.yaml: backbone.name: unknown model {name!r}; use a timm model name (timm.list_models()), "
        f"torchvision:<name> (torchvision.models.list_models()) or {TINY_TEST}.{hint}"
    )


def data_config(name: str, input_size: int | None) -> DataConfig:
    """The preprocessing of backbone `name` at `input_size` (None: the backbone's own), from its registry
    entry alone. An unknown name stops here, with the closest known names."""
    if name == TINY_TEST:
        return DataConfig(input_size or 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0)
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        short = name.removeprefix(TORCHVISION_PREFIX)
        if short not in torchvision.models.list_models():
            raise unknown_backbone(name, [TORCHVISION_PREFIX + n for n in torchvision.models.list_models()])
        preprocess = torchvision.models.get_model_weights(short).DEFAULT.transforms()
        return DataConfig(
            input_size=input_size or preprocess.crop_size[0],
            interpolation=preprocess.interpolation.value,
            mean=tuple(preprocess.mean),
            std=tuple(preprocess.std),
            crop_pct=preprocess.crop_size[0] / preprocess.resize_size[0],
        )
    if not timm.is_model(name):
        raise unknown_backbone(name, timm.list_models())
    config = timm.data.resolve_data_config({}, pretrained_cfg=timm.get_pretrained_cfg(name).to_dict())
    return DataConfig(
        input_size=input_size or config["input_size"][-1],
        interpolation=config["interpolation"],
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        crop_pct=config["crop_pct"],
    )
