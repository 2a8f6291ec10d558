"""featurize: embed every image once with the frozen, pretrained backbone.

One safetensors file per split (embeddings and label indices) and `features.json`, which records what
produced them (backbone, weights, preprocessing) plus the class list and the row order (image paths).
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from reprotune import stage
from reprotune.backbones import Backbone, load_backbone
from reprotune.datasets import ManifestImages, make_loader, worker_count
from reprotune.layout import SPLITS, Layout, atomic_output
from reprotune.params import Params

log = logging.getLogger(__name__)


@torch.inference_mode()
def embed(model: torch.nn.Module, loader: DataLoader, channels_last: bool, desc: str) -> torch.Tensor:
    batches = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", disable=None):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batches.append(model(images).float())
    return torch.cat(batches)


def prepare(backbone: Backbone, channels_last: bool) -> torch.nn.Module:
    model = backbone.model.eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def featurize(params: Params) -> None:
    layout = Layout(params.paths)
    torch.manual_seed(0)
    manifest = pd.read_csv(layout.split_manifest, dtype={"label": str}, keep_default_na=False)
    classes = sorted(manifest["label"].unique())
    index = {label: i for i, label in enumerate(classes)}
    backbone = load_backbone(params.backbone)
    model = prepare(backbone, params.backbone.channels_last)
    transform = backbone.data.eval_transform()
    workers = worker_count(params.featurize.num_workers)
    meta = {
        "backbone": params.backbone.name,
        "weights": backbone.weights,
        "data_config": backbone.data.__dict__,
        "channels_last": params.backbone.channels_last,
        "num_features": backbone.num_features,
        "classes": classes,
        "paths": {},
    }
    with atomic_output(layout.features) as staging:
        staging.mkdir()
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            labels = [index[label] for label in rows["label"]]
            dataset = ManifestImages(rows["path"], labels, transform, tuple(params.clean.background))
            loader = make_loader(dataset, params.featurize.batch_size, workers)
            embeddings = embed(model, loader, params.backbone.channels_last, f"featurize {split}")
            save_file(
                {"embeddings": embeddings.contiguous(), "labels": torch.tensor(labels, dtype=torch.int64)},
                staging / layout.features_file(split).name,
            )
            meta["paths"][split] = rows["path"].tolist()
            log.info("%s: %d embeddings of size %d", split, *embeddings.shape)
        (staging / layout.features_meta.name).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    stage.run(featurize)


if __name__ == "__main__":
    main()
