"""Benchmark the clean stage's check of large photos: images/s on 12-megapixel JPEGs with reduced-scale
(draft) decoding against full decoding, and peak memory for N and 2N files (it must not grow with N).

    .venv/bin/python -m benchmarks.bench_clean [--images 12]

Each configuration runs in a fresh process so that peak RSS is its own. Figures are ratios within one run:
the machine is shared and noisy. Results are merged into reports/bench.json under "clean".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BENCH_FILE = Path("reports/bench.json")


def make_photos(folder: Path, count: int, size=(4000, 3000)) -> list[Path]:
    """Photo-like JPEGs (smooth gradients, edges and noise) of 12 megapixels, quality 90."""
    rng = np.random.default_rng(0)
    small = (size[0] // 8, size[1] // 8)
    paths = []
    for n in range(count):
        x, y = np.meshgrid(np.linspace(0, 1, small[0]), np.linspace(0, 1, small[1]))
        base = np.stack(
            [np.sin((x * rng.uniform(2, 9) + y * rng.uniform(2, 9)) * np.pi + c) for c in range(3)], -1
        )
        thumb = Image.fromarray(
            ((base + 1) * 110 + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)
        )
        big = np.asarray(thumb.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        big = (big + rng.integers(-8, 9, big.shape, dtype=np.int16)).clip(0, 255).astype(np.uint8)
        path = folder / f"photo_{n:03d}.jpg"
        Image.fromarray(big).save(path, quality=90)
        paths.append(path)
    return paths


def measure(paths: list[str], draft: bool) -> dict:
    """Run clean's check over `paths` in this process; report images/s and peak RSS."""
    from reprotune import params as params_module
    from stages import clean

    rules = params_module.load().clean
    if not draft:
        clean.CHECK_SIDE = 1 << 20  # a draft request above the real size keeps libjpeg at full scale
    started = time.perf_counter()
    for path in paths:
        clean.inspect(Path(path), rules)
    seconds = time.perf_counter() - started
    return {
        "images": len(paths),
        "images_per_second": round(len(paths) / seconds, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def in_fresh_process(paths: list[Path], draft: bool) -> dict:
    code = (
        "import json, sys; from benchmarks.bench_clean import measure; "
        f"print(json.dumps(measure({[str(p) for p in paths]!r}, {draft})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="12 MP JPEGs to generate (default 12)")
    count = parser.parse_args().images
    with tempfile.TemporaryDirectory() as folder:
        paths = make_photos(Path(folder), count)
        full = in_fresh_process(paths, draft=False)
        draft = in_fresh_process(paths, draft=True)
        half = in_fresh_process(paths[: max(1, count // 2)], draft=True)
    result = {
        "cores": os.cpu_count(),
        "megapixels": 12,
        "full_decode": full,
        "draft_decode": draft,
        "draft_speedup": round(draft["images_per_second"] / full["images_per_second"], 2),
        "peak_rss_ratio_n_vs_half_n": round(draft["peak_rss_mib"] / half["peak_rss_mib"], 3),
    }
    print(f"clean check of {count} x 12 MP JPEGs on {result['cores']} cores")
    print(f"  full decode : {full['images_per_second']:7.2f} images/s, peak {full['peak_rss_mib']} MiB")
    print(f"  draft decode: {draft['images_per_second']:7.2f} images/s, peak {draft['peak_rss_mib']} MiB")
    print(
        f"  speed-up {result['draft_speedup']}x; peak RSS with {count} files / with {count // 2}: "
        f"{result['peak_rss_ratio_n_vs_half_n']}"
    )
    existing = json.loads(BENCH_FILE.read_text()) if BENCH_FILE.exists() else {}
    BENCH_FILE.parent.mkdir(parents=True, exist_ok=True)
    BENCH_FILE.write_text(json.dumps(existing | {"clean": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
