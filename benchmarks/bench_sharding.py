"""Benchmark featurize under torchrun: one process against 2 processes (`torchrun --standalone
--nproc_per_node 2 -m stages.featurize`, gloo, one torch thread each) on CPU, on generated 0.2 MP photos,
each run in a fresh workspace with an empty embedding cache: seconds, images/s, their ratio, and whether
the split files are the same bytes.

    .venv/bin/python -m benchmarks.bench_sharding [--images 512]

On a 2-core machine two processes share the cores one process already uses (its torch threads), so the
ratio shows the cost of sharding more than its gain; on N GPUs each process has its own. Merged into
reports/bench.json under "sharding".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.bench_featurize import photo_folder, prepared
from benchmarks.results import print_table, save

ROOT = Path(__file__).resolve().parents[1]


def featurize_seconds(params, workspace: Path, command: list[str], threads: str | None) -> float:
    """Seconds of `command` (a featurize run) in `workspace`, with `params` as its params.yaml."""
    (workspace / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    started = time.perf_counter()
    subprocess.run(command, cwd=workspace, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    count = parser.parse_args().images
    from reprotune.pipeline.layout import SPLITS, Layout

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        raw = photo_folder(work / "raw", count, ["0.2MP"])
        one, _ = prepared(work / "one", raw)
        two, _ = prepared(work / "two", raw)
        alone = featurize_seconds(one, work / "one", [sys.executable, "-m", "stages.featurize"], None)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        together = featurize_seconds(two, work / "two", [*torchrun, "-m", "stages.featurize"], "1")
        same = all(
            Layout(one.paths).features_file(split).read_bytes()
            == Layout(two.paths).features_file(split).read_bytes()
            for split in SPLITS
        )
    result = save(
        "sharding",
        {
            "images": count,
            "seconds": {"1_process": round(alone, 1), "2_processes": round(together, 1)},
            "images_per_second": {
                "1_process": round(count / alone, 1),
                "2_processes": round(count / together, 1),
            },
            "ratio_2_vs_1": round(alone / together, 2),
            "same_bytes": same,
        },
    )
    print_table(
        f"featurize, {count} x 0.2 MP, empty cache (process start and model load included)",
        [
            ("1 process", f"{result['images_per_second']['1_process']} img/s", f"{alone:.1f} s"),
            (
                "2 torchrun processes",
                f"{result['images_per_second']['2_processes']} img/s",
                f"{together:.1f} s",
            ),
            ("ratio", f"{result['ratio_2_vs_1']}x", f"same bytes: {same}"),
        ],
    )


if __name__ == "__main__":
    main()
