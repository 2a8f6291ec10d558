"""The content-addressed embedding cache featurize keeps.

The cache maps (recipe, sha256 of the image file, as ingest recorded it) to an embedding. A recipe is
everything that changes an embedding other than the image: backbone and weights, preprocessing, decoder,
batch shape, device, torch version. Each recipe has a folder of shards (streamed safetensors, see
reprotune/data/tensorfiles.py); a featurize run adds one shard holding the images it had to embed, written to a
temporary name and renamed, so readers (parallel `dvc queue` workers too) only ever see whole shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from reprotune.data.tensorfiles import StreamingTensorFile, open_rows, tensor_file
from reprotune.pipeline.atomic_io import write_text

DIGEST_BYTES = 32  # sha256


def recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]


class EmbeddingCache:
    """Embeddings of one recipe, by image digest, across every shard written so far."""

    def __init__(self, root: Path, recipe: dict) -> None:
        self.folder = root / recipe_key(recipe)
        self.recipe = recipe
        self._where: dict[bytes, tuple[np.ndarray, int]] = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            self._index(shard)

    def _index(self, shard: Path) -> None:
        embeddings = open_rows(shard, "embeddings")
        for row, digest in enumerate(open_rows(shard, "digests")):
            self._where.setdefault(digest.tobytes(), (embeddings, row))

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._where

    def __len__(self) -> int:
        return len(self._where)

    def rows(self, digests: Iterable[bytes]) -> np.ndarray:
        return np.stack([embeddings[row] for embeddings, row in map(self._where.__getitem__, digests)])

    @contextmanager
    def new_shard(self, count: int, num_features: int) -> Iterator[StreamingTensorFile]:
        """A shard for `count` new embeddings: write the digests, then the embeddings. It becomes visible (to
        this cache object too) only once complete."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.folder / "recipe.json", json.dumps(self.recipe, indent=2, sort_keys=True) + "\n")
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        temporary = self.folder / f".{name}.tmp"
        tensors = {
            "digests": (np.dtype(np.uint8), (count, DIGEST_BYTES)),
            "embeddings": (np.dtype(np.float32), (count, num_features)),
        }
        try:
            with tensor_file(temporary, tensors) as writer:
                yield writer
            os.replace(temporary, self.folder / name)
        finally:
            temporary.unlink(missing_ok=True)
        self._index(self.folder / name)
