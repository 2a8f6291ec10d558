"""Benchmark the clean stage's check of large photos: images/s on 12-megapixel JPEGs with reduced-scale
(draft) decoding against full decoding, and peak memory for N and 2N files (it must not grow with N); and
clean.num_workers: images/s checking 0.2 MP JPEGs in clean's own process and in 2 worker processes (workers
started included), with the same results.

    .venv/bin/python -m benchmarks.bench_clean [--images 12] [--worker-images 2000]

Each configuration runs in a fresh process so that peak RSS is its own. Figures are ratios within one run:
the machine is shared and noisy. Results are merged into reports/bench.json under "clean".
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.photos import SIZES, make_photos
from benchmarks.results import print_table, save


def measure(paths: list[str], draft: bool) -> dict:
    """Run clean's check over `paths` in this process; report images/s and peak RSS."""
    from reprotune.data.dataconfig import data_config
    from reprotune.modalities.image import cleaning as clean
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.resolve import for_data

    params = for_data(params_module.load())
    rules, data = params.clean, data_config(params.backbone.name, params.backbone.input_size)
    if not draft:
        clean.CHECK_SIDE = 1 << 20  # a draft request above the real size keeps libjpeg at full scale
    started = time.perf_counter()
    for path in paths:
        clean.inspect(Path(path), rules, data)
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


def workers_compared(count: int) -> dict:
    """images/s of clean's check (inspected_in_order) on `count` 0.2 MP JPEGs with 1 and 2 workers."""
    from reprotune.data.dataconfig import data_config
    from reprotune.modalities.image import cleaning as clean
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.resolve import for_data

    params = for_data(params_module.load())
    rules, data = params.clean, data_config(params.backbone.name, params.backbone.input_size)
    with tempfile.TemporaryDirectory() as folder:
        paths = [str(p) for p in make_photos(Path(folder), count, SIZES["0.2MP"])]
        rates, results = {}, {}
        for workers in (1, 2):
            started = time.perf_counter()
            results[workers] = list(clean.inspected_in_order(paths, rules, data, workers))
            rates[workers] = round(count / (time.perf_counter() - started), 1)
    same = all(
        a.pixels_sha256 == b.pixels_sha256
        and (a.hashes == b.hashes).all()
        and a.resized_copy == b.resized_copy
        for a, b in zip(results[1], results[2], strict=True)
    )
    return {
        "images": count,
        "images_per_second": {f"{w}_workers": rate for w, rate in rates.items()},
        "ratio_2_vs_1": round(rates[2] / rates[1], 2),
        "same_results": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="12 MP JPEGs to generate (default 12)")
    parser.add_argument("--worker-images", type=int, default=2000, help="0.2 MP JPEGs for clean.num_workers")
    options = parser.parse_args()
    count = options.images
    with tempfile.TemporaryDirectory() as folder:
        paths = make_photos(Path(folder), count, SIZES["12MP"])
        full = in_fresh_process(paths, draft=False)
        draft = in_fresh_process(paths, draft=True)
        half = in_fresh_process(paths[: max(1, count // 2)], draft=True)
    result = {
        "megapixels": 12,
        "full_decode": full,
        "draft_decode": draft,
        "draft_speedup": round(draft["images_per_second"] / full["images_per_second"], 2),
        "peak_rss_ratio_n_vs_half_n": round(draft["peak_rss_mib"] / half["peak_rss_mib"], 3),
        "workers": workers_compared(options.worker_images),
    }
    save("clean", result)
    print_table(
        f"clean: checking {count} x 12 MP JPEGs",
        [
            ("full decode", f"{full['images_per_second']:.2f} img/s", f"peak {full['peak_rss_mib']} MiB"),
            ("draft decode", f"{draft['images_per_second']:.2f} img/s", f"peak {draft['peak_rss_mib']} MiB"),
            ("speed-up", f"{result['draft_speedup']}x", ""),
            ("peak RSS N / N/2", f"{result['peak_rss_ratio_n_vs_half_n']}", "target 1.0 (no growth)"),
            (
                f"2 workers vs 1, {options.worker_images} x 0.2 MP",
                f"{result['workers']['ratio_2_vs_1']}x",
                f"{result['workers']['images_per_second']}, same results: {result['workers']['same_results']}",
            ),
        ],
    )


if __name__ == "__main__":
    main()
