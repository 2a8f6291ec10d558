"""Benchmark the clean stage's check of large photos: images/s on 12-megapixel JPEGs with reduced-scale
(draft) decoding against full decoding, and peak memory for N and 2N files (it must not grow with N).

    .venv/bin/python -m benchmarks.bench_clean [--images 12]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="12 MP JPEGs to generate (default 12)")
    count = parser.parse_args().images
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
    }
    save("clean", result)
    print_table(
        f"clean: checking {count} x 12 MP JPEGs",
        [
            ("full decode", f"{full['images_per_second']:.2f} img/s", f"peak {full['peak_rss_mib']} MiB"),
            ("draft decode", f"{draft['images_per_second']:.2f} img/s", f"peak {draft['peak_rss_mib']} MiB"),
            ("speed-up", f"{result['draft_speedup']}x", ""),
            ("peak RSS N / N/2", f"{result['peak_rss_ratio_n_vs_half_n']}", "target 1.0 (no growth)"),
        ],
    )


if __name__ == "__main__":
    main()
