"""Benchmark the leakage stage's search (reprotune/data/similar_embeddings.py: pairs_across) on synthetic
features files: random embeddings of `--dimensions` (1,280: EfficientNet-Lite0's), split 70/15/15, with a near
copy of a train row planted every 100 val and test rows.

    .venv/bin/python -m benchmarks.bench_leakage [--sizes 50000 100000] [--dimensions 1280]

Two ways, each in a fresh process so that its memory is its own: every split's embeddings loaded whole
(safetensors' load_file, as the stage read them before; the search is today's in both, so the normalised copy
of every split that the old search also held is not counted), and the stage's own memory maps
(reprotune/data/tensorfiles.py: open_rows), read a tile or a block of rows at a time. Both must find the same
pairs. Memory is given twice: peak RSS, which counts the mapped file's pages that were read (the kernel drops
them when memory is short), and the peak of anonymous memory (RssAnon, sampled every 20 ms), which it
cannot. Results go to reports/bench.json under "leakage"; the machine is shared and noisy, so compare the
two within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.results import print_table, save

SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}
MIN_COSINE = 0.9  # leakage.min_cosine's auto for images
PLANTED_EVERY = 100


def write_features(folder: Path, items: int, dimensions: int) -> int:
    """The three features files; returns how many copies were planted."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    train = rng.standard_normal((int(items * SHARES["train"]), dimensions), dtype=np.float32)
    planted = 0
    for name in ("val", "test"):
        rows = rng.standard_normal((int(items * SHARES[name]), dimensions), dtype=np.float32)
        for k in range(0, len(rows), PLANTED_EVERY):
            rows[k] = train[rng.integers(len(train))] + 0.1 * rng.standard_normal(
                dimensions, dtype=np.float32
            )
            planted += 1
        save_file({"embeddings": rows}, folder / f"{name}.safetensors")
    save_file({"embeddings": train}, folder / "train.safetensors")
    return planted


def anonymous_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(folder: Path, mapped: bool) -> dict:
    """In this process: the search over the files in `folder`, its time, pairs and peak memory."""
    from safetensors.numpy import load_file

    from reprotune.data.similar_embeddings import pairs_across
    from reprotune.data.tensorfiles import open_rows

    peak, done = [anonymous_mib()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], anonymous_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    files = {name: folder / f"{name}.safetensors" for name in SHARES}
    splits = (
        {name: open_rows(path, "embeddings") for name, path in files.items()}
        if mapped
        else {name: load_file(path)["embeddings"] for name, path in files.items()}
    )
    count, pairs = pairs_across(splits, MIN_COSINE)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "seconds": round(seconds, 1),
        "pairs": count,
        "listed": [[p.split_a, p.row_a, p.split_b, p.row_b] for p in pairs],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_anonymous_mib": round(max(peak[0], anonymous_mib()), 1),
    }


def run_both(items: int, dimensions: int) -> dict:
    """Both ways over one synthetic set, each in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        planted = write_features(Path(folder), items, dimensions)
        runs = {}
        for name, flag in (("loaded_whole", []), ("memory_mapped", ["--mapped"])):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_leakage", "--measure", folder, *flag],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    if runs["loaded_whole"]["listed"] != runs["memory_mapped"]["listed"]:
        raise SystemExit(f"{items} items: the two ways found different pairs")
    return {
        "embeddings_mib": round(items * dimensions * 4 / 2**20, 1),
        "planted_copies": planted,
        "pairs_found": runs["memory_mapped"]["pairs"],
        **{
            f"{name}.{figure}": run[figure]
            for name, run in runs.items()
            for figure in ("seconds", "peak_anonymous_mib", "peak_rss_mib")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000])
    parser.add_argument("--dimensions", type=int, default=1280)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the folder, in a fresh process
    parser.add_argument("--mapped", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.measure:
        print(json.dumps(measure(Path(options.measure), options.mapped)))
        return
    sizes = {str(items): run_both(items, options.dimensions) for items in options.sizes}
    save("leakage", {"dimensions": options.dimensions, "min_cosine": MIN_COSINE, "sizes": sizes})
    print_table(
        f"leakage search, {options.dimensions} dimensions: seconds, peak anonymous memory and peak RSS",
        [
            (
                f"{int(items):,} items ({row['embeddings_mib']} MiB), {way}",
                f"{row[f'{way}.seconds']} s",
                f"anonymous {row[f'{way}.peak_anonymous_mib']} MiB, RSS {row[f'{way}.peak_rss_mib']} MiB; "
                f"{row['pairs_found']} pairs of {row['planted_copies']} copies",
            )
            for items, row in sizes.items()
            for way in ("loaded_whole", "memory_mapped")
        ],
    )


if __name__ == "__main__":
    main()
