"""Pairs of items in different splits whose embeddings are nearly the same direction: copies that clean's
duplicate grouping (perceptual hashes for images, normalised text for texts) did not catch, found on the
frozen backbone's embeddings instead (the `leakage` stage).

Exact search: FAISS's flat inner-product index over the L2-normalised embeddings of one split, a tile of rows
at a time, queried by every later split's rows in blocks (range search: every pair above the cosine, none
missed). The stage hands it the features files as memory maps (reprotune/data/tensorfiles.py: open_rows),
read a tile or a block at a time, so that memory stays bounded however many items there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERY_BLOCK = 4096  # query rows per range search: bounds the score matrix FAISS computes at once
# Rows indexed at a time: 84 MB at 1,280 dimensions, held about three times over while being indexed.
INDEX_TILE = 16_384
MAX_LISTED = 10_000  # pairs kept (the highest cosines); every pair is counted


@dataclass(frozen=True, order=True)
class Pair:
    """Sorted by cosine, highest first (hence the negation), then by split and row, so the order is total."""

    negative_cosine: float
    split_a: str
    row_a: int
    split_b: str
    row_b: int

    @property
    def cosine(self) -> float:
        return -self.negative_cosine


def normalised(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.ascontiguousarray(embeddings / np.maximum(norms, 1e-12), dtype=np.float32)


def pairs_across(splits: dict[str, np.ndarray], min_cosine: float) -> tuple[int, list[Pair]]:
    """Every pair of rows of two different splits (in `splits`' order: a before b) whose cosine is above
    `min_cosine`: how many, and the MAX_LISTED highest, sorted."""
    import faiss

    names = list(splits)
    count, kept = 0, []
    for position, a in enumerate(names):
        later = names[position + 1 :]
        for tile_start in range(0, len(splits[a]) if later else 0, INDEX_TILE):
            tile = normalised(splits[a][tile_start : tile_start + INDEX_TILE])
            index = faiss.IndexFlatIP(tile.shape[1])
            index.add(tile)
            for b in later:
                for start in range(0, len(splits[b]), QUERY_BLOCK):
                    queries = normalised(splits[b][start : start + QUERY_BLOCK])
                    limits, scores, rows = index.range_search(queries, min_cosine)
                    count += len(rows)
                    for query in range(len(limits) - 1):
                        for found in range(limits[query], limits[query + 1]):
                            cosine = round(float(scores[found]), 4)
                            kept.append(Pair(-cosine, a, tile_start + int(rows[found]), b, start + query))
                    # Keep memory bounded: the order is total, so cutting to the best MAX_LISTED is exact.
                    if len(kept) > 2 * MAX_LISTED:
                        kept = sorted(kept)[:MAX_LISTED]
    return count, sorted(kept)[:MAX_LISTED]
