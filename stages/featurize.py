"""featurize: embed every image once with the frozen, pretrained backbone.

One safetensors file per split (label indices and embeddings, rows in manifest order) and `features.json`,
which records what produced them (backbone, weights, preprocessing) plus the class list and the row order.

Embeddings come from a content-addressed cache (reprotune/embeddings.py) keyed by the image file's sha256
under a recipe of everything else that shapes an embedding. Only images the cache lacks go through the
backbone; adding one image to a large dataset embeds one image. The split files are then streamed from the
cache, so memory does not grow with the number of images, and are byte-identical with or without the cache.
Images are read from clean's resized copies where they have one (reprotune/resized.py), so no image file is
decoded here twice over.

Texts (reprotune/text_encoders.py) go the same way: the cache key is the text's sha256 (taken at clean)
under the encoder's recipe. Each class name is embedded too (`labels.safetensors`), for zero-shot
classification: the nearest class name by cosine, with no labelled example (learning_curve's k = 0,
evaluate's `zeroshot`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import torch
from safetensors.torch import save_file

from reprotune import resized, stage
from reprotune.atomic_io import atomic_output
from reprotune.backbones import Backbone, load_backbone
from reprotune.datasets import eval_images, make_loader, worker_count
from reprotune.devices import pick_device
from reprotune.embeddings import EmbeddingCache
from reprotune.inference import outputs
from reprotune.layout import SPLITS, Layout
from reprotune.params import Params
from reprotune.tensorfiles import tensor_file
from reprotune.text_encoders import eval_texts, in_row_order
from reprotune.zero_shot import label_prompts, read_descriptions

log = logging.getLogger(__name__)

# Bump when decoding (clean's resized copies included) or embedding changes in a way the recipe's other
# fields miss.
RECIPE_VERSION = 2
ASSEMBLE_ROWS = 1024  # rows copied from the cache per write


def prepare(backbone: Backbone, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = backbone.model.eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def recipe(params: Params, backbone: Backbone, device: torch.device) -> dict:
    """Everything besides the image bytes that an embedding depends on: the cache key."""
    return {
        "version": RECIPE_VERSION,
        "backbone": params.backbone.name,
        "weights": backbone.weights,
        "data_config": backbone.data.__dict__,
        "decode_side": backbone.data.eval_decode_side,
        "resized_copies": {"quality": resized.QUALITY, "subsampling": resized.SUBSAMPLING},
        "background": list(params.clean.background),
        "channels_last": params.backbone.channels_last,
        "batch_size": params.featurize.batch_size,
        "precision": params.featurize.precision,
        "device": device.type,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
    }


def fill_cache(
    cache: EmbeddingCache,
    manifest: pd.DataFrame,
    params: Params,
    backbone: Backbone,
    device: torch.device,
    copies: Path,
) -> int:
    """Embed the images whose content the cache lacks (each distinct content once); return how many."""
    missing = manifest[~manifest["digest"].map(cache.__contains__)].drop_duplicates("digest")
    if missing.empty:
        return 0
    settings = params.featurize
    dataset = eval_images(missing, [0] * len(missing), backbone.data, tuple(params.clean.background), copies)
    loader = make_loader(
        dataset, settings.batch_size, worker_count(settings.num_workers), pin=device.type == "cuda"
    )
    model = prepare(backbone, device, params.backbone.channels_last)
    with cache.new_shard(len(missing), backbone.num_features) as shard:
        shard.write(np.frombuffer(b"".join(missing["digest"]), np.uint8).reshape(len(missing), -1))
        for embeddings in outputs(
            model,
            loader,
            device,
            params.backbone.channels_last,
            bf16=settings.precision == "bfloat16",
            pad_to=settings.batch_size,  # one batch shape for every pass (see inference.outputs)
            desc="featurize",
        ):
            shard.write(embeddings.numpy())
    return len(missing)


def write_split(
    path: Path, cache: EmbeddingCache, digests: list[bytes], labels: list[int], num_features: int
) -> None:
    tensors = {
        "labels": (np.dtype(np.int64), (len(labels),)),
        "embeddings": (np.dtype(np.float32), (len(digests), num_features)),
    }
    with tensor_file(path, tensors) as out:
        out.write(np.asarray(labels, np.int64))
        for start in range(0, len(digests), ASSEMBLE_ROWS):
            out.write(cache.rows(digests[start : start + ASSEMBLE_ROWS]))


def text_recipe(params: Params, backbone: Backbone, device: torch.device) -> dict:
    """A text embedding's cache key besides the text itself."""
    import sentence_transformers
    import transformers

    return {
        "version": RECIPE_VERSION,
        "modality": "text",
        "backbone": params.backbone.name,
        "weights": backbone.weights,
        "text_config": backbone.data.describe(),
        "batch_size": params.featurize.batch_size,
        "precision": params.featurize.precision,
        "device": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def embed_texts(
    texts: list[str], params: Params, backbone: Backbone, device: torch.device, desc: str | None = None
) -> torch.Tensor:
    """Embeddings of `texts`, in their order. No row padding: on text, the batch's shape does not change an
    embedding (reprotune/text_encoders.py)."""
    settings = params.featurize
    loader = eval_texts(texts, [0] * len(texts), backbone.data, settings.batch_size)
    model = prepare(backbone, device, channels_last=False)
    batches = outputs(model, loader, device, False, bf16=settings.precision == "bfloat16", desc=desc)
    return in_row_order(torch.cat(list(batches)), loader)


def fill_text_cache(
    cache: EmbeddingCache, manifest: pd.DataFrame, params: Params, backbone: Backbone, device: torch.device
) -> int:
    """As fill_cache, for texts: the texts whose sha256 the cache lacks, each once."""
    missing = manifest[~manifest["digest"].map(cache.__contains__)].drop_duplicates("digest")
    if missing.empty:
        return 0
    embeddings = embed_texts(missing["text"].tolist(), params, backbone, device, desc="featurize")
    digests = missing["digest"].tolist()
    with cache.new_shard(len(missing), backbone.num_features) as shard:
        shard.write(np.frombuffer(b"".join(digests), np.uint8).reshape(len(missing), -1))
        shard.write(embeddings.numpy())
    return len(missing)


def featurize(params: Params) -> None:
    layout = Layout(params.paths)
    text = layout.modality == "text"
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    classes = sorted(manifest["label"].unique())
    index = {label: i for i, label in enumerate(classes)}
    backbone = load_backbone(params.backbone, text=text)
    device = pick_device(params.featurize.device, "featurize.device")
    manifest["digest"] = [bytes.fromhex(h) for h in manifest["sha256"]]  # of each file (text), from ingest
    if text:
        cache = EmbeddingCache(layout.embedding_cache, text_recipe(params, backbone, device))
        embedded = fill_text_cache(cache, manifest, params, backbone, device)
    else:
        cache = EmbeddingCache(layout.embedding_cache, recipe(params, backbone, device))
        embedded = fill_cache(cache, manifest, params, backbone, device, layout.resized_copies)
    log.info("embedded %d, %d from the cache %s", embedded, len(manifest) - embedded, cache.folder)
    meta = {
        "backbone": params.backbone.name,
        "weights": backbone.weights,
        **({"modality": "text", "text_config": backbone.data.describe()} if text else {}),
        **({} if text else {"data_config": backbone.data.__dict__}),
        "channels_last": params.backbone.channels_last,
        "precision": params.featurize.precision,
        "num_features": backbone.num_features,
        "classes": classes,
        "paths": {},
    }
    with atomic_output(layout.features) as staging:
        staging.mkdir()
        if text:
            prompts = label_prompts(classes, read_descriptions(layout.label_descriptions, classes))
            embeddings = embed_texts(prompts, params, backbone, device)
            save_file({"embeddings": embeddings.contiguous()}, staging / layout.label_embeddings.name)
            meta["label_prompts"] = prompts
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            labels = [index[label] for label in rows["label"]]
            write_split(
                staging / layout.features_file(split).name,
                cache,
                rows["digest"].tolist(),
                labels,
                backbone.num_features,
            )
            meta["paths"][split] = rows["path"].tolist()
            log.info("%s: %d embeddings of size %d", split, len(rows), backbone.num_features)
        (staging / layout.features_meta.name).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    stage.run(featurize)


if __name__ == "__main__":
    main()
