"""Images through a backbone: the pretrained network (timm, torchvision, or a local file), the eval
transform over clean's resized copies, in row order."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import PIL
import torch
from torch import nn

from reprotune.data import resized
from reprotune.data.datasets import eval_images, make_loader, worker_count
from reprotune.models.backbones import Backbone, load_backbone
from reprotune.models.inference import Inference, outputs
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Backbone as BackboneParams


class ImageEncoding:
    def load(self, backbone: BackboneParams) -> Backbone:
        return load_backbone(backbone)

    def architecture(self, backbone: BackboneParams) -> Backbone:
        return load_backbone(backbone, pretrained=False)

    def describe(self, backbone: Backbone) -> dict:
        return {"data_config": backbone.data.__dict__}

    def preprocessing(self, described: dict) -> str:
        config = described["data_config"]
        return (
            f"Input {config['input_size']} px, {config['interpolation']} resize, mean {list(config['mean'])}, "
            f"std {list(config['std'])}."
        )

    def recipe(self, backbone: Backbone, run: Inference) -> dict:
        return {
            "data_config": backbone.data.__dict__,
            "decode_side": backbone.data.eval_decode_side,
            "resized_copies": {"quality": resized.QUALITY, "subsampling": resized.SUBSAMPLING},
            "background": list(run.background),
            "channels_last": run.channels_last,
            "pillow": PIL.__version__,
        }

    def class_prompts(self, classes: list[str], layout: Layout) -> list[str] | None:
        return None  # image backbones here embed no text: no zero-shot model

    def outputs(
        self,
        model: nn.Module,
        rows: pd.DataFrame,
        backbone: Backbone,
        run: Inference,
        layout: Layout,
        desc: str | None = None,
    ) -> Iterator[torch.Tensor]:
        dataset = eval_images(
            rows, [0] * len(rows), backbone.data, tuple(run.background), layout.resized_copies
        )
        loader = make_loader(
            dataset, run.batch_size, worker_count(run.workers), pin=run.device.type == "cuda"
        )
        yield from outputs(model, loader, run.device, run.channels_last, run.bf16, run.pad_to, desc)


ENCODING = ImageEncoding()
