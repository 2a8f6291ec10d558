"""Near-duplicate detection that survives how real copies are made: resizing, JPEG recompression, a format
change, a small crop or an added border, EXIF re-orientation.

Each image gets a set of 256-bit DCT hashes (imagehash.phash, hash_size 16) of its grey picture at one
normalised size: two of the whole picture (as stored, and with a uniform frame trimmed, the same hash
twice when there is none) and one per crop in CROPS (every combination of 0 or 5% off each side, and 2.5%
off all four). Two images are near duplicates when a whole-picture hash of one is within `max_distance`
bits of a whole-picture or a crop hash of the other: a copy cropped by up to 5% a side lines up with one
of the original's crops, and a copy with a border lines up once the frame is trimmed. Orientation is taken
care of before hashing: clean hashes the picture upright, as its EXIF tag says it is shown.

benchmarks/bench_duplicates.py measures recall per transformation and false positives on distinct photos;
the default distance in params.yaml was chosen there (docs/near-duplicates.md). clean groups images with
this detector and split checks its splits for leakage with it, so both see the same pairs; image decoding
(reprotune/data/images.py) is a separate module, so that a decoding change does not re-run split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

HASH_SIZE = 16  # phash side: 16 x 16 = 256 bits
WORDS = HASH_SIZE * HASH_SIZE // 64  # uint64 words per hash
SIDE = 256  # every picture is hashed from this normalised square, so a resized copy hashes alike
FRAME_TOLERANCE = 12.0  # grey levels: a frame row or column is flat within this
WHOLE = 2  # whole-picture hashes per image: as stored, and frame trimmed
# Fractions cut from (left, top, right, bottom).
CROPS = [
    (left, top, right, bottom)
    for left in (0.0, 0.05)
    for top in (0.0, 0.05)
    for right in (0.0, 0.05)
    for bottom in (0.0, 0.05)
    if (left, top, right, bottom) != (0.0, 0.0, 0.0, 0.0)
] + [(0.025, 0.025, 0.025, 0.025)]
HASHES = WHOLE + len(CROPS)
CODE_BYTES = WORDS * 8
# The search's share of each code when it pays: unrelated 128-bit halves of random codes lie 64 +- 6 bits
# apart, so few come within a near-duplicate distance, and each popcount is half the work.
PREFIX_BYTES = 16
PREFIX_PAYS = 0.01  # the share of prefix candidates that fail on all bits beyond which measuring them costs
# more (about 50 ns each in numpy) than the half popcount saves (under 1 ns): then whole codes are searched
SAMPLE_QUERIES, SAMPLE_CODES = 256, 8_192  # pairs drawn to estimate those shares, seeded
QUERY_BLOCK = 65_536  # whole-picture hashes per range search, at most
RESULTS_PER_SEARCH = 1 << 24  # candidates one range search is expected to return (about 200 MB): fewer
# queries per search where the codes are alike
VERIFY_BLOCK = 1 << 22  # candidates measured on all bits at a time (64 bytes each while measured)
INDEX_TILE = 131_072  # indexed codes searched at a time: 2 MB of prefixes, within a core's cache


def frame(grey: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the picture inside a uniform frame (rows and columns at the edges that
    are one flat colour, the top-left pixel's), at most a quarter of each side; the whole when none."""
    height, width = grey.shape
    corner = float(grey[0, 0])

    def flat(line: np.ndarray) -> bool:
        return line.std() < FRAME_TOLERANCE / 2 and abs(float(line.mean()) - corner) < FRAME_TOLERANCE

    top, bottom, left, right = 0, height, 0, width
    while top < height // 4 and flat(grey[top]):
        top += 1
    while bottom > height - height // 4 and flat(grey[bottom - 1]):
        bottom -= 1
    while left < width // 4 and flat(grey[top:bottom, left]):
        left += 1
    while right > width - width // 4 and flat(grey[top:bottom, right - 1]):
        right -= 1
    return left, top, right, bottom


def _phash(grey: Image.Image) -> np.ndarray:
    import imagehash

    bits = imagehash.phash(grey, hash_size=HASH_SIZE).hash.flatten()
    return np.packbits(bits).view(">u8").astype(np.uint64)


def _cut(grey: Image.Image, fractions: tuple[float, float, float, float]) -> Image.Image:
    width, height = grey.size
    left, top, right, bottom = fractions
    return grey.crop(
        (
            round(width * left),
            round(height * top),
            width - round(width * right),
            height - round(height * bottom),
        )
    )


def image_hashes(image: Image.Image) -> np.ndarray:
    """The image's hash set: uint64 (HASHES, WORDS), whole-picture hashes first."""
    grey = image.convert("L")
    square = grey.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    left, top, right, bottom = frame(np.asarray(square, dtype=np.float32))
    trimmed = square
    if (left, top, right, bottom) != (0, 0, SIDE, SIDE):
        scale_x, scale_y = grey.width / SIDE, grey.height / SIDE
        box = (round(left * scale_x), round(top * scale_y), round(right * scale_x), round(bottom * scale_y))
        trimmed = grey.crop(box).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    pictures = [square, trimmed] + [_cut(square, crop) for crop in CROPS]
    return np.stack([_phash(picture) for picture in pictures])


@dataclass(frozen=True)
class NearPairs:
    """Pairs of images, first < second, sorted by (first, second), with their distance in bits: as arrays,
    since a folder of look-alike pictures can have tens of millions of pairs."""

    first: np.ndarray  # int64
    second: np.ndarray  # int64
    distance: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.first)

    def as_dict(self) -> dict[tuple[int, int], int]:
        """{(first, second): distance}, for small sets."""
        pairs = zip(self.first.tolist(), self.second.tolist(), strict=True)
        return dict(zip(pairs, self.distance.tolist(), strict=True))


def near_pairs(hashes: np.ndarray, max_distance: int, queried: int | None = None) -> NearPairs:
    """Every pair i < j of images whose hash sets are within `max_distance` bits, with its distance: the
    least of whole-to-whole, whole-of-i-to-crop-of-j and crop-of-i-to-whole-of-j; in (i, j) order.

    Exact, by FAISS's exhaustive binary index (popcount over every pair of codes, on every core), with
    savings that change no answer:
    - an image without a frame has its trimmed hash equal to its stored one, and that copy is neither
      searched nor indexed;
    - where it pays (search_plan), the search runs on the first PREFIX_BYTES of each code, half the
      popcounts, since two codes within `max_distance` bits are within it on any part of their bits, and each
      candidate it finds is then measured on all bits;
    - the index is searched a tile of INDEX_TILE codes at a time (FAISS scans the whole index per query; a
      tile stays in the CPU's cache, 1.8x as fast).
    Memory stays bounded: each range search takes as many queries as keep its results near
    RESULTS_PER_SEARCH, and a block of queries' pairs is reduced to one row per pair before the next.
    tests/test_duplicates.py checks it against brute force; benchmarks/bench_pair_search.py times it, and for
    a million images searches only the whole hashes of the first `queried` images (the pairs they are the
    searched side of) to extrapolate from."""
    import faiss

    hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(hashes), HASHES, WORDS)
    count = len(hashes)
    if count < 2:
        return NearPairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    codes = np.ascontiguousarray(hashes, dtype=">u8").view(np.uint8)  # (count, HASHES, 32) bytes, MSB first
    kept = np.ones((count, HASHES), dtype=bool)
    kept[:, 1] = np.any(codes[:, 1] != codes[:, 0], axis=1)  # the trimmed hash, where a frame was trimmed
    owner = np.broadcast_to(np.arange(count)[:, None], (count, HASHES))
    indexed, indexed_owner = codes[kept], owner[kept]
    searched = kept[:queried, :WHOLE]
    whole, whole_owner = codes[:queried, :WHOLE][searched], owner[:queried, :WHOLE][searched]
    searched_bytes, pass_rate = search_plan(whole, indexed, max_distance)
    queries = np.ascontiguousarray(whole[:, :searched_bytes])
    tile_size = min(INDEX_TILE, len(indexed))
    block = min(QUERY_BLOCK, max(64, int(RESULTS_PER_SEARCH / (tile_size * max(pass_rate, 1e-9)))))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(whole), block):
        block_found = []
        for tile in range(0, len(indexed), INDEX_TILE):
            index = faiss.IndexBinaryFlat(searched_bytes * 8)
            index.add(np.ascontiguousarray(indexed[tile : tile + INDEX_TILE, :searched_bytes]))
            limits, distances, ids = index.range_search(queries[start : start + block], max_distance + 1)
            query = start + np.repeat(np.arange(len(limits) - 1), np.diff(limits).astype(np.int64))
            other = tile + ids
            for part in range(0, len(ids), VERIFY_BLOCK):  # the full distance, a bounded block at a time
                q, o = query[part : part + VERIFY_BLOCK], other[part : part + VERIFY_BLOCK]
                distance = (
                    distances[part : part + VERIFY_BLOCK].astype(np.int64)
                    if searched_bytes == CODE_BYTES
                    else np.bitwise_count(whole[q] ^ indexed[o]).sum(axis=1, dtype=np.int64)
                )
                i, j = whole_owner[q], indexed_owner[o]
                close = (distance <= max_distance) & (i != j)
                block_found.append((np.minimum(i, j)[close], np.maximum(i, j)[close], distance[close]))
        if block_found:
            found.append(
                least_per_pair(*(np.concatenate(column) for column in zip(*block_found, strict=True)))
            )
    if not found:
        return NearPairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    i, j, distance = least_per_pair(*(np.concatenate(column) for column in zip(*found, strict=True)))
    return NearPairs(i.astype(np.int64), j.astype(np.int64), distance.astype(np.int64))


def least_per_pair(i: np.ndarray, j: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, ...]:
    """One row per pair (i, j), with its least distance, sorted by (i, j)."""
    order = np.lexsort((distance, j, i))
    i, j, distance = i[order], j[order], distance[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], distance[first]


def search_plan(whole: np.ndarray, indexed: np.ndarray, max_distance: int) -> tuple[int, float]:
    """(bytes of each code to search, the share of searched pairs expected to come back), from a seeded
    sample of pairs. The prefix pays on codes that look random; on alike pictures (scans, renders of one
    scene) most prefixes pass and would each be measured again, so whole codes are searched."""
    rng = np.random.default_rng(0)
    sample_queries = whole[rng.choice(len(whole), min(len(whole), SAMPLE_QUERIES), replace=False)]
    sample_codes = indexed[rng.choice(len(indexed), min(len(indexed), SAMPLE_CODES), replace=False)]
    if not len(sample_queries):
        return PREFIX_BYTES, 0.0
    words = [codes.view(np.uint64) for codes in (sample_queries, sample_codes)]  # (n, 4) words per code
    differing = np.bitwise_count(words[0][:, None, :] ^ words[1][None, :, :])  # (queries, codes, words)
    prefix = (differing[..., : PREFIX_BYTES // 8].sum(-1) <= max_distance).mean()
    full = (differing.sum(-1) <= max_distance).mean()
    if prefix - full > PREFIX_PAYS:
        return CODE_BYTES, float(full)
    return PREFIX_BYTES, float(prefix)


def save_hashes(path: Path, hashes: np.ndarray) -> None:
    save_file({"hashes": np.ascontiguousarray(hashes, dtype=np.uint64).reshape(-1, HASHES, WORDS)}, path)


def load_hashes(path: Path) -> np.ndarray:
    return load_file(path)["hashes"]
