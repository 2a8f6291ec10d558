"""Benchmark featurize against the bare model, the embedding cache, and featurize's peak memory.

    .venv/bin/python -m benchmarks.bench_featurize [--images 512] [--mixed 64]

1. Throughput: the featurize stage on generated photo-like JPEGs (a folder of 0.2 MP images, and a mixed
   folder with equal numbers of 0.2, 2 and 12 MP images) against the bare backbone's forward pass on
   pre-made tensors, with params.yaml's backbone, batch size, memory format and this process's torch
   threads. The stage's one-off model load is measured apart and left out of the per-image figure.
2. Decoding: the share of the stage's time spent decoding and transforming (the data loader alone).
3. Cache: a second run with nothing new, and a run after adding one image, against the cold run.
4. Memory: peak RSS of the stage in a fresh process for N and 2N images (it must not grow).

Merged into reports/bench.json under "featurize".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from benchmarks.photos import SIZES, make_photos
from benchmarks.results import print_table, save


def stage_params(workdir: Path, paths: list[Path]):
    """params.yaml with every path under `workdir`, and a split manifest of `paths` (all in train)."""
    from reprotune import params as params_module
    from reprotune.layout import sha256_of_file

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["paths"] = {key: str(workdir / value) for key, value in raw["paths"].items()}
    raw["paths"]["raw"] = str(paths[0].parent)  # the generated photos are the data folder
    params = params_module.validate(raw)
    manifest = Path(params.paths.splits) / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"path": str(p), "label": str(i % 4), "split": "train", "group": i, "sha256": sha256_of_file(p)}
        for i, p in enumerate(paths)
    ]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return params


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def bare_model_rate(params, passes: int = 6) -> float:
    """Images/s of the backbone alone on pre-made tensors, as featurize runs it."""
    from reprotune.backbones import load_backbone
    from stages.featurize import prepare

    backbone = load_backbone(params.backbone)
    model = prepare(backbone, torch.device("cpu"), params.backbone.channels_last)
    size = backbone.data.input_size
    batch = torch.randn(params.featurize.batch_size, 3, size, size)
    if params.backbone.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(batch)  # warm-up: oneDNN picks and caches its kernels
        seconds = timed(lambda: [model(batch) for _ in range(passes)])
    return passes * len(batch) / seconds


def loader_rate(params, paths: list[Path]) -> float:
    """Images/s of decoding + preprocessing alone, through the loader featurize uses."""
    from reprotune.backbones import load_backbone
    from reprotune.datasets import ManifestImages, make_loader, worker_count

    data = load_backbone(params.backbone).data
    dataset = ManifestImages(
        [str(p) for p in paths],
        [0] * len(paths),
        data.eval_transform(),
        tuple(params.clean.background),
        data.eval_decode_side,
    )
    loader = make_loader(dataset, params.featurize.batch_size, worker_count(params.featurize.num_workers))
    return len(paths) / timed(lambda: [None for _ in loader])


def stage_seconds(params) -> float:
    from stages.featurize import featurize

    return timed(lambda: featurize(params))


def load_seconds(params) -> float:
    from reprotune.backbones import load_backbone

    return timed(lambda: load_backbone(params.backbone))


def throughput(folder: Path, paths: list[Path]) -> dict:
    """The stage against the bare model measured just before and just after it (this machine is noisy;
    the mean of the two is the reference)."""
    params = stage_params(folder, paths)
    bare_before = bare_model_rate(params)
    load = load_seconds(params)
    stage = stage_seconds(params)
    bare = (bare_before + bare_model_rate(params)) / 2
    per_image_rate = len(paths) / (stage - load)
    decode_rate = loader_rate(params, paths)
    return {
        "images": len(paths),
        "bare_model_images_per_second": round(bare, 1),
        "stage_seconds": round(stage, 2),
        "model_load_seconds": round(load, 2),
        "images_per_second": round(per_image_rate, 1),
        "ratio_to_bare_model": round(per_image_rate / bare, 3),
        "decode_images_per_second": round(decode_rate, 1),
        "decode_share": round(per_image_rate / decode_rate, 3),
    }


def peak_rss_mib(folder: Path, paths: list[Path]) -> float:
    """Peak RSS of featurize over `paths` in a fresh process (cold cache)."""
    code = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from benchmarks.bench_featurize import stage_params\n"
        "from stages.featurize import featurize\n"
        "featurize(stage_params(Path(sys.argv[1]), [Path(p) for p in json.loads(sys.argv[2])]))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder), json.dumps([str(p) for p in paths])],
        capture_output=True,
        text=True,
        check=True,
    )
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="0.2 MP JPEGs in the first folder")
    parser.add_argument(
        "--mixed",
        type=int,
        default=64,
        help="images of each size in the mixed folder (3 x 64: whole batches)",
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        small = make_photos(root / "photos", options.images + 1, SIZES["0.2MP"], "small")
        added, small = small[-1], small[:-1]
        mixed = [
            path
            for label, size in SIZES.items()
            for path in make_photos(root / "photos", options.mixed, size, f"mixed_{label}", seed=1)
        ]
        params = stage_params(root / "bare", small[:8])
        results = {
            "threads": torch.get_num_threads(),
            "batch_size": params.featurize.batch_size,
            "input_size": params.backbone.input_size,
            "channels_last": params.backbone.channels_last,
            "small_0.2MP": throughput(root / "small", small),
            "mixed_0.2_2_12MP": throughput(root / "mixed", mixed),
        }
        # The cache: the small folder's cache is warm now.
        cached = stage_params(root / "small", small)
        warm = stage_seconds(cached)
        grown = stage_params(root / "small", [*small, added])
        one_more = stage_seconds(grown)
        cold = results["small_0.2MP"]["stage_seconds"]
        results["cache"] = {
            "cold_seconds": cold,
            "warm_seconds": round(warm, 2),
            "one_image_added_seconds": round(one_more, 2),
            "one_image_added_ratio_to_cold": round(one_more / cold, 3),
        }
        half = peak_rss_mib(root / "rss-half", small[: len(small) // 2])
        full = peak_rss_mib(root / "rss-full", small)
        results["memory"] = {
            "images": [len(small) // 2, len(small)],
            "peak_rss_mib": [half, full],
            "ratio": round(full / half, 3),
        }
    save("featurize", results)
    small_result, mixed_result = results["small_0.2MP"], results["mixed_0.2_2_12MP"]
    print_table(
        f"featurize on {torch.get_num_threads()} threads, batch {results['batch_size']}, "
        f"{results['input_size']} px",
        [
            (
                "bare model",
                f"{small_result['bare_model_images_per_second']} img/s",
                "pre-made tensors, same batch and threads",
            ),
            (
                "0.2 MP folder",
                f"{small_result['images_per_second']} img/s",
                f"ratio {small_result['ratio_to_bare_model']} (target >= 0.9)",
            ),
            (
                "mixed folder",
                f"{mixed_result['images_per_second']} img/s",
                f"ratio {mixed_result['ratio_to_bare_model']} (target >= 0.8)",
            ),
            ("decode share 0.2 MP", f"{small_result['decode_share']}", "of the stage's per-image time"),
            ("decode share mixed", f"{mixed_result['decode_share']}", ""),
            ("warm cache rerun", f"{results['cache']['warm_seconds']} s", f"cold {cold} s"),
            (
                "one image added",
                f"{results['cache']['one_image_added_seconds']} s",
                f"ratio {results['cache']['one_image_added_ratio_to_cold']} of cold",
            ),
            (
                "peak RSS 2N / N",
                f"{results['memory']['ratio']}",
                f"{results['memory']['peak_rss_mib']} MiB (target ~1.0)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
