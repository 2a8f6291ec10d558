"""Benchmark the near-duplicate pair search (reprotune/data/duplicates.py near_pairs: FAISS's exhaustive binary
index) on synthetic hash sets: random 256-bit hashes, 18 per image as clean makes them, with a copy planted
every 50 images (a whole-picture hash 8 bits off, and a crop hash equal to another's whole picture). As in
clean, an image without a frame has its trimmed hash equal to its stored one; every tenth image has a frame
(6 of the 60 real photos in ../shared/data have one).

    .venv/bin/python -m benchmarks.bench_pair_search [--sizes 10000 100000] [--million-sample 5000]

- at the smallest size, the pair search clean used before (every pair as one float32 matrix product, a block
  of images at a time: MATRIX_PRODUCT below) is timed too, and both must give the same pairs;
- beyond, the matrix product's time is extrapolated with the square of the count;
- 1,000,000 images is simulated on hashes alone: the index holds all 18,000,000 codes, and the range search
  runs for the whole-picture hashes of `--million-sample` images; the search's cost grows linearly with the
  queries, so the full time is the sample's time x 1,000,000 / sample.
Results go to reports/bench.json under "pair_search"; the machine is shared and noisy, so compare ratios.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.results import print_table, save
from reprotune.data.duplicates import HASHES, WHOLE, WORDS, near_pairs

DISTANCE = 40  # clean.near_duplicate_distance's auto
FRAMED_EVERY = 10  # images with a frame, whose trimmed hash differs from the stored one


def synthetic(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(count, HASHES, WORDS), dtype=np.uint64)
    unframed = np.arange(count) % FRAMED_EVERY != 0
    hashes[unframed, 1] = hashes[unframed, 0]
    for k in range(0, count - 2, 50):
        hashes[k + 1, 0] = hashes[k, 0] ^ np.uint64(0xFF)
        hashes[k + 2, WHOLE + 3] = hashes[k, 1]
    return hashes


def matrix_product_pairs(hashes: np.ndarray, max_distance: int) -> dict[tuple[int, int], int]:
    """The search clean used before FAISS: hashes as +-1 vectors, bit distance = (bits - dot) / 2, every pair
    as one matrix product, a block of images at a time."""
    count, bits = len(hashes), WORDS * 64

    def signs(h: np.ndarray) -> np.ndarray:
        unpacked = np.unpackbits(np.ascontiguousarray(h, dtype=">u8").view(np.uint8), axis=-1)
        return unpacked.astype(np.float32) * 2 - 1

    every = signs(hashes).reshape(count * HASHES, bits)
    block = max(1, 128 * 2**20 // (4 * WHOLE * HASHES * count))
    pairs: dict[tuple[int, int], int] = {}
    for start in range(0, count, block):
        whole = signs(hashes[start : start + block, :WHOLE]).reshape(-1, bits)
        dot = (whole @ every.T).reshape(-1, WHOLE, count, HASHES).max(axis=(1, 3))
        distance = np.rint((bits - dot) / 2).astype(np.int64)
        for row, column in zip(*np.nonzero(distance <= max_distance), strict=True):
            i = int(row) + start
            if i != column:
                key = (min(i, int(column)), max(i, int(column)))
                pairs[key] = min(pairs.get(key, bits), int(distance[row, column]))
    return pairs


def timed(function, *arguments) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - started, result


def simulated_million(sample: int) -> float:
    """Seconds for 1,000,000 images: near_pairs with every hash of 1,000,000 synthetic images indexed and the
    whole hashes of `sample` of them searched, scaled to all of them (the search's cost grows linearly with
    the queries; the index's build is counted once)."""
    count = 1_000_000
    hashes = synthetic(count, seed=1)
    started = time.perf_counter()
    near_pairs(hashes, DISTANCE, queried=0)
    build = time.perf_counter() - started
    started = time.perf_counter()
    near_pairs(hashes, DISTANCE, queried=sample)
    searched = time.perf_counter() - started - build
    return build + searched * count / sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--million-sample", type=int, default=5_000, help="0: skip the 1M simulation")
    options = parser.parse_args()

    sizes = sorted(options.sizes)
    hashes = synthetic(sizes[0])
    old_seconds, old_pairs = timed(matrix_product_pairs, hashes, DISTANCE)
    rows: dict[str, dict] = {}
    for size in sizes:
        seconds, found = timed(near_pairs, synthetic(size), DISTANCE)
        pairs = found.as_dict() if size == sizes[0] else found
        rows[str(size)] = {
            "faiss_seconds": round(seconds, 2),
            "pairs": len(pairs),
            "matrix_product_seconds" if size == sizes[0] else "matrix_product_seconds_extrapolated": round(
                old_seconds * (size / sizes[0]) ** 2, 1
            ),
        }
        if size == sizes[0]:
            assert pairs == old_pairs, "the index and the matrix product disagree"
            rows[str(size)]["same_pairs_as_matrix_product"] = True
        rows[str(size)]["speedup"] = round(old_seconds * (size / sizes[0]) ** 2 / seconds, 1)
    if options.million_sample:
        seconds = simulated_million(options.million_sample)
        rows["1000000"] = {
            "faiss_seconds_simulated": round(seconds, 0),
            "simulated_from_queries_of": options.million_sample,
            "matrix_product_seconds_extrapolated": round(old_seconds * (1_000_000 / sizes[0]) ** 2, 0),
        }
    result = save("pair_search", {"distance": DISTANCE, "hashes_per_image": HASHES, "sizes": rows})
    print_table(
        f"near-duplicate pair search, {HASHES} hashes per image, within {DISTANCE} bits, {result['cores']} cores",
        [
            (
                f"{int(size):,} images",
                f"{row.get('faiss_seconds', row.get('faiss_seconds_simulated'))} s",
                f"matrix product {row.get('matrix_product_seconds', row.get('matrix_product_seconds_extrapolated'))} s"
                + (" (extrapolated)" if "matrix_product_seconds" not in row else " (measured, same pairs)"),
            )
            for size, row in rows.items()
        ],
    )


if __name__ == "__main__":
    main()
