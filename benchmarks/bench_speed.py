"""Benchmark how fast the default image backbone trains and embeds on this machine, for README's table of
expected run times: images per second for featurize's forward pass (frozen backbone) and for one training
step of full fine-tuning (forward, backward, AdamW), at 160 and 224 px.

    .venv/bin/python -m benchmarks.bench_speed [--batch-size 32] [--steps 4]

The model sees pre-made tensors, so the figures are the network's own speed; decoding adds little on top
(featurize's benchmark measures the whole stage at about 0.9 of the bare model). Merged into reports/bench.json
under "speed", with the device it ran on.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from benchmarks.results import print_table, save

BACKBONE = "tf_efficientnet_lite0"  # what `backbone.name: auto` becomes on a photo folder


def images_per_second(step, batch: int, steps: int) -> float:
    step()  # warm-up: allocation and first-pass set-up
    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return round(batch * steps / (time.perf_counter() - started), 1)


def measure(side: int, batch: int, steps: int, device: torch.device) -> dict:
    from reprotune.models.backbones import load_backbone
    from reprotune.models.classifier import Classifier
    from reprotune.pipeline.params import Backbone

    backbone = load_backbone(Backbone(name=BACKBONE, weights=None, input_size=side, channels_last=True))
    model = Classifier(backbone.model, backbone.num_features, 10).to(
        device, memory_format=torch.channels_last
    )
    images = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    @torch.inference_mode()
    def embed() -> None:
        model.eval()
        model.backbone(images)

    def train() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return {
        "featurize_images_per_second": images_per_second(embed, batch, steps),
        "full_finetune_images_per_second": images_per_second(train, batch, steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    options = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sides = {str(side): measure(side, options.batch_size, options.steps, device) for side in (160, 224)}
    result = save(
        "speed",
        {
            "device": device.type,
            "threads": torch.get_num_threads(),
            "backbone": BACKBONE,
            "batch_size": options.batch_size,
            "sides": sides,
        },
    )
    print_table(
        f"{BACKBONE} on {device.type} ({result['cores']} cores), batch {options.batch_size}",
        [
            (f"{side} px {name.removesuffix('_images_per_second')}", f"{value} img/s", "")
            for side, figures in sides.items()
            for name, value in figures.items()
        ],
    )


if __name__ == "__main__":
    main()
