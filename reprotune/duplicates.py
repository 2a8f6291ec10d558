"""Near-duplicate detection: a perceptual hash per image and the pairs of images whose hashes are close.
clean groups images with it and split checks its splits for leakage with it, so both see the same pairs;
image decoding (reprotune/images.py) is a separate module, so that a decoding change does not re-run split."""

from __future__ import annotations

import numpy as np
from PIL import Image


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT hash (imagehash.phash): near-identical pictures differ in a few bits."""
    import imagehash

    return int(str(imagehash.phash(image)), 16)


def near_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 2048) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose 64-bit hashes differ in at most `max_distance` bits.

    All pairs are compared, a block of rows at a time, so memory stays at chunk x n bytes.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(hashes), chunk):
        distance = np.bitwise_count(hashes[start : start + chunk, None] ^ hashes[None, :])
        rows, columns = np.nonzero(distance <= max_distance)
        rows += start
        pairs += [(int(r), int(c)) for r, c in zip(rows, columns, strict=True) if r < c]
    return pairs
