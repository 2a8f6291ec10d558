"""Benchmark a large folder through ingest -> clean -> split, and DVC on it.

    .venv/bin/python -m benchmarks.bench_large_folder [--images 100000] [--side 96] [--workers 1 2]

A synthetic folder of `--images` small photo-like JPEGs (`--side` px, 10 classes). Each stage runs as
`dvc repro` runs it (`python -m stages.<stage>` in a workspace holding params.yaml), in a fresh process:
wall seconds and peak RSS (its own, by wait4). clean runs twice, with `clean.num_workers` 1 and 2 (the
peak is the largest of clean's and its workers'): images/s, their ratio, and whether the outputs are the
same bytes. Then DVC on the folder: `dvc add` of it (hashing every file), and a no-op `dvc status` right
after (DVC's state database spares the re-hash). Merged into reports/bench.json under "large_folder";
with other `--workers` than 1 and 2 (one pass of clean, say, to re-measure split alone) under
"large_folder_workers_<counts>", so that every table holds one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from benchmarks.results import print_table, save

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def small_photos(raw: Path, count: int, side: int) -> None:
    """`count` distinct JPEGs (quality 90) of side x side over CLASSES folders: smooth shading under six
    random shapes, plus noise. (Smooth waves alone are too alike for the perceptual hashes: 1,500 of them
    gave 11,731 pairs within 40 bits; these give none.)"""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    for label in range(CLASSES):
        (raw / f"class_{label}").mkdir(parents=True, exist_ok=True)
    for n in range(count):
        shading = np.stack([np.sin(x * rng.uniform(1, 4) + y * rng.uniform(1, 4) + c) for c in range(3)], -1)
        image = Image.fromarray(((shading + 1) * 100 + 20).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.uniform(0, 0.8, 2) * side
            w, h = rng.uniform(0.1, 0.4, 2) * side
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (side, side, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
            raw / f"class_{n % CLASSES}" / f"{n:07d}.jpg", quality=90
        )


def run_stage(workspace: Path, module: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `python -m module` in `workspace`. The peak is wait4's: the largest of
    the process and of its worker processes, each on its own."""
    started = time.perf_counter()
    with (workspace / f"{module}.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=workspace,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=log,
        )
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{module} failed: {(workspace / f'{module}.log').read_text()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="clean.num_workers per pass")
    options = parser.parse_args()
    counts = sorted(set(options.workers))
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        raw = work / "raw"
        started = time.perf_counter()
        small_photos(raw, options.images, options.side)
        generated = time.perf_counter() - started
        figures: dict[str, dict] = {}
        outputs = {}
        for workers in counts:
            workspace = work / f"workers_{workers}"
            workspace.mkdir()
            settings["paths"] = {key: str(workspace / value) for key, value in settings["paths"].items()}
            settings["paths"]["raw"] = str(raw)
            settings["clean"]["num_workers"] = workers
            (workspace / "params.yaml").write_text(yaml.safe_dump(settings))
            stages = ("ingest", "clean", "split") if workers == counts[0] else ("ingest", "clean")
            for stage in stages:
                seconds, peak = run_stage(workspace, f"stages.{stage}")
                figures[f"{stage}" if workers == 1 else f"{stage}_{workers}_workers"] = {
                    "seconds": round(seconds, 1),
                    "images_per_second": round(options.images / seconds, 1),
                    "peak_rss_mib": round(peak, 1),
                }
            outputs[workers] = tree_bytes(Path(settings["paths"]["cleaned"]))
        same = all(output == outputs[counts[0]] for output in outputs.values())

        dvc_workspace = work / "dvc"
        dvc_workspace.mkdir()
        shutil.move(raw, dvc_workspace / "raw")
        dvc = [str(Path(sys.executable).parent / "dvc")]
        subprocess.run(["git", "init", "-q"], cwd=dvc_workspace, check=True)
        subprocess.run([*dvc, "init", "-q"], cwd=dvc_workspace, check=True)
        timings = {}
        for name, command in (
            ("dvc_add_seconds", ["add", "-q", "raw"]),
            ("dvc_status_seconds", ["status", "-q"]),
        ):
            started = time.perf_counter()
            subprocess.run([*dvc, *command], cwd=dvc_workspace, check=False, capture_output=True)
            timings[name] = round(time.perf_counter() - started, 1)
    compared = counts == [1, 2]
    result = save(
        "large_folder" if compared else "large_folder_workers_" + "_".join(map(str, counts)),
        {
            "images": options.images,
            "side_px": options.side,
            "generate_seconds": round(generated, 1),
            **figures,
            **(
                {
                    "clean_ratio_2_vs_1_workers": round(
                        figures["clean"]["seconds"] / figures["clean_2_workers"]["seconds"], 2
                    ),
                    "clean_same_bytes_1_and_2_workers": same,
                }
                if compared
                else {}
            ),
            **timings,
        },
    )
    print_table(
        f"{options.images:,} JPEGs of {options.side} px: ingest -> clean -> split, each in a fresh process",
        [
            *[
                (
                    stage,
                    f"{row['images_per_second']} img/s",
                    f"{row['seconds']} s, peak {row['peak_rss_mib']} MiB",
                )
                for stage, row in figures.items()
            ],
            *(
                [("clean 2 workers vs 1", f"{result['clean_ratio_2_vs_1_workers']}x", f"same bytes: {same}")]
                if compared
                else []
            ),
            (
                "dvc add / no-op dvc status",
                f"{timings['dvc_add_seconds']} s",
                f"{timings['dvc_status_seconds']} s",
            ),
        ],
    )


if __name__ == "__main__":
    main()
