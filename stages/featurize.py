"""featurize: embed every image (or text) once with the frozen, pretrained backbone (the modality's encoder,
reprotune/modalities/encoding.py).

One safetensors file per split (label indices and embeddings, rows in manifest order) and `features.json`,
which records what produced them (backbone, weights, preprocessing) plus the class list and the row order.

Embeddings come from a content-addressed cache (reprotune/data/embeddings.py) keyed by the image file's sha256
under a recipe of everything else that shapes an embedding. Only images the cache lacks go through the
backbone; adding one image to a large dataset embeds one image. The split files are then streamed from the
cache, so memory does not grow with the number of images, and are byte-identical with or without the cache.
Images are read from clean's resized copies where they have one (reprotune/data/resized.py), so no image file is
decoded here twice over.

Under torchrun (`torchrun --nproc-per-node N -m stages.featurize`, on one node or many, as for finetune)
each process embeds one contiguous share of the items the cache lacks into its own cache shard; after every
process has finished, the first writes the split files from the cache. An item's embedding does not depend
on its batchmates (every batch is padded to one shape), so the files are the same bytes as one process's.

Texts go the same way: the cache key is the text's sha256 (taken at clean) under the encoder's recipe.
Where the encoder embeds text, each class name is embedded too (`labels.safetensors`, and
`label_prompts` in features.json), for zero-shot classification: the nearest class name by cosine, with no
labelled example (learning_curve's k = 0, evaluate's `zeroshot`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from reprotune.data.embeddings import EmbeddingCache
from reprotune.data.tensorfiles import tensor_file
from reprotune.modalities import encoding as modality_encoding
from reprotune.modalities.encoding import Encoding
from reprotune.models.inference import Inference
from reprotune.models.pretrained import Backbone
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import SPLITS, Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.markdown import lines_of
from reprotune.training.devices import pick_device
from reprotune.training.distributed import barrier, local_device, process_group

log = logging.getLogger(__name__)

# Bump when decoding (clean's resized copies included) or embedding changes in a way the recipe's other
# fields miss.
RECIPE_VERSION = 2
ASSEMBLE_ROWS = 1024  # rows copied from the cache per write


def prepare(backbone: Backbone, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = backbone.model.eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def inference(params: Params, device: torch.device) -> Inference:
    """How featurize runs the backbone. Every batch is padded to the full batch size (inference.outputs),
    so that an image's embedding does not depend on the images it is batched with."""
    settings = params.featurize
    return Inference(
        device,
        settings.batch_size,
        settings.num_workers,
        params.backbone.channels_last,
        bf16=settings.precision == "bfloat16",
        pad_to=settings.batch_size,
        background=params.clean.background,
    )


def recipe(params: Params, encoding: Encoding, backbone: Backbone, run: Inference) -> dict:
    """Everything besides the item itself that an embedding depends on: the cache key."""
    return {
        "version": RECIPE_VERSION,
        "backbone": params.backbone.name,
        "weights": backbone.weights,
        "batch_size": params.featurize.batch_size,
        "precision": params.featurize.precision,
        "device": run.device.type,
        "torch": torch.__version__,
        **encoding.recipe(backbone, run),
    }


def missing(cache: EmbeddingCache, manifest: pd.DataFrame) -> pd.DataFrame:
    """The items whose content the cache lacks, each distinct content once, in manifest order."""
    return manifest[~manifest["digest"].map(cache.__contains__)].drop_duplicates("digest")


def share(rows: pd.DataFrame, rank: int, world: int) -> pd.DataFrame:
    """Process `rank`'s contiguous share of `rows` among `world` (no padding: shares differ by one at most)."""
    bounds = np.linspace(0, len(rows), world + 1).round().astype(int)
    return rows.iloc[bounds[rank] : bounds[rank + 1]]


def fill_cache(
    cache: EmbeddingCache,
    missing: pd.DataFrame,
    encoding: Encoding,
    backbone: Backbone,
    run: Inference,
    layout: Layout,
) -> None:
    """Embed `missing` into a new shard of the cache."""
    if missing.empty:
        return
    model = prepare(backbone, run.device, run.channels_last)
    with cache.new_shard(len(missing), backbone.num_features) as shard:
        shard.write(np.frombuffer(b"".join(missing["digest"]), np.uint8).reshape(len(missing), -1))
        for embeddings in encoding.outputs(model, missing, backbone, run, layout, desc="featurize"):
            shard.write(embeddings.numpy())


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


def featurize(params: Params) -> None:
    layout = Layout(params.paths)
    encoding = modality_encoding.of(layout.modality)
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    backbone = encoding.load(params.backbone)
    manifest["digest"] = [bytes.fromhex(h) for h in manifest["sha256"]]  # of each file (text), from ingest
    with process_group() as (rank, world):
        device = local_device(pick_device(params.featurize.device, "params.yaml: featurize.device"))
        run = inference(params, device)
        key = recipe(params, encoding, backbone, run)
        cache = EmbeddingCache(layout.embedding_cache, key)
        lacking = missing(cache, manifest)
        barrier()  # every process has read the cache before any adds to it, so the shares are one partition
        fill_cache(cache, share(lacking, rank, world), encoding, backbone, run, layout)
        if rank == 0:
            log.info(
                "embedded %d, %d from the cache %s%s",
                len(lacking),
                len(manifest) - len(lacking),
                cache.folder,
                f" ({world} processes)" if world > 1 else "",
            )
        barrier()
        if rank == 0:  # the cache read again: it now holds every process's shard
            cache = EmbeddingCache(layout.embedding_cache, key)
            absent = missing(cache, manifest)
            if not absent.empty:
                raise InputError(
                    f"{len(absent)} embeddings the other processes made are not in {cache.folder}: under torchrun "
                    "on several machines, paths.embedding_cache must be a folder that every machine sees (a "
                    "shared filesystem)"
                )
            write_features(params, layout, encoding, backbone, run, manifest, cache)


def write_features(
    params: Params,
    layout: Layout,
    encoding: Encoding,
    backbone: Backbone,
    run: Inference,
    manifest: pd.DataFrame,
    cache: EmbeddingCache,
) -> None:
    """The split files from the cache, features.json and featurize's report section."""
    classes = sorted(manifest["label"].unique())
    index = {label: i for i, label in enumerate(classes)}
    meta = {
        "backbone": params.backbone.name,
        "weights": backbone.weights,
        **encoding.describe(backbone),
        "channels_last": params.backbone.channels_last,
        "precision": params.featurize.precision,
        "num_features": backbone.num_features,
        "classes": classes,
        "paths": {},
    }
    with atomic_output(layout.features) as staging:
        staging.mkdir()
        prompts = encoding.class_prompts(classes, layout)
        if prompts is not None:  # the encoder embeds text: the class names too, for zero-shot
            model = prepare(backbone, run.device, run.channels_last)
            rows = pd.DataFrame({"text": prompts})
            embeddings = torch.cat(list(encoding.outputs(model, rows, backbone, run, layout)))
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
    recorded = json.loads(json.dumps(meta))  # as features.json holds it
    write_text(
        layout.report_section("featurize"),
        lines_of(
            [
                f"- Backbone `{recorded['backbone']}`, weights: {recorded['weights']}.",
                f"- {encoding.preprocessing(recorded)}",
            ]
        ),
    )


def main() -> None:
    stage.run(featurize)


if __name__ == "__main__":
    main()
