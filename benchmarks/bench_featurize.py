"""Benchmark featurize against the bare model, the embedding cache, and featurize's peak memory.

    .venv/bin/python -m benchmarks.bench_featurize [--images 1024] [--mixed 64]

1. Throughput: the featurize stage on generated photo-like JPEGs (a folder of 0.2 MP images, and a mixed
   folder with equal numbers of 0.2, 2 and 12 MP images) against the bare backbone's forward pass on
   pre-made tensors, with params.yaml's backbone, batch size, memory format and this process's torch
   threads. ingest, clean and split run first, as in `dvc repro`: featurize reads clean's resized copies,
   and clean's own rate is reported beside it (it decodes every file to check it in any case). The
   stage runs twice, with an empty embedding cache each time: the first run gives the end-to-end ratio
   (model load and first-pass set-up included), the second, in the warmed-up process and with the model
   load left out, the per-image ratio.
2. Decoding: the share of the stage's time spent reading and transforming (the data loader alone).
3. Cache: a second run with nothing new, and a run after adding one image, against the cold run.
4. Memory: peak RSS of the stage in a fresh process for N and 2N images (it must not grow).

Merged into reports/bench.json under "featurize".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from benchmarks.photos import SIZES, make_photos
from benchmarks.results import print_table, save


def photo_folder(raw: Path, per_size: int, sizes: list[str], classes: int = 4, seed: int = 0) -> Path:
    """raw/<class>/*.jpg: `per_size` photos of each size in `sizes`, spread over `classes` folders."""
    for size in sizes:
        for label in range(classes):
            count = per_size // classes + (label < per_size % classes)
            make_photos(raw / f"class_{label}", count, SIZES[size], f"{size}", seed=seed * 100 + label)
    return raw


def bench_params(workdir: Path, raw: Path):
    """params.yaml with every path under `workdir` and `raw` as the data folder."""
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.resolve import for_data

    settings = yaml.safe_load(Path("params.yaml").read_text())
    settings["paths"] = {key: str(workdir / value) for key, value in settings["paths"].items()}
    settings["paths"]["raw"] = str(raw)
    return for_data(params_module.validate(settings))


def prepared(workdir: Path, raw: Path):
    """bench_params after ingest, clean and split have run (as `dvc repro` would before featurize); also
    clean's seconds."""
    from stages import clean, ingest, split

    params = bench_params(workdir, raw)
    ingest.ingest(params)
    seconds = timed(lambda: clean.clean(params))
    split.split(params)
    return params, seconds


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def bare_model_rate(params, passes: int = 6) -> float:
    """Images/s of the backbone alone on pre-made tensors, as featurize runs it."""
    from reprotune.models.backbones import load_backbone
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


def loader_rate(params) -> float:
    """Images/s of reading + preprocessing alone, through the loader featurize uses."""
    from reprotune.data.dataconfig import data_config
    from reprotune.data.datasets import eval_images, make_loader, worker_count
    from reprotune.pipeline.layout import Layout

    layout = Layout(params.paths)
    rows = layout.read_manifest(layout.split_manifest, {"label": str})
    dataset = eval_images(
        rows,
        [0] * len(rows),
        data_config(params.backbone.name, params.backbone.input_size),
        tuple(params.clean.background),
        layout.resized_copies,
    )
    loader = make_loader(dataset, params.featurize.batch_size, worker_count(params.featurize.num_workers))
    return len(rows) / timed(lambda: [None for _ in loader])


def stage_seconds(params) -> float:
    from stages.featurize import featurize

    return timed(lambda: featurize(params))


def load_seconds(params) -> float:
    from reprotune.models.backbones import load_backbone

    return timed(lambda: load_backbone(params.backbone))


def throughput(workdir: Path, raw: Path) -> dict:
    """The stage twice over the folder, each time with an empty embedding cache: first end to end (model
    load, first-pass kernel set-up and page faults included), then again in the warmed-up process for the
    per-image figure (model load left out). The bare model is measured just before and just after (this
    machine is noisy; the mean of the two is the reference)."""
    params, clean_seconds = prepared(workdir / "first", raw)
    again, _ = prepared(workdir / "again", raw)
    images = len(pd.read_csv(Path(params.paths.splits) / "manifest.csv"))
    bare_before = bare_model_rate(params)
    first = stage_seconds(params)
    load = load_seconds(again)
    warm = stage_seconds(again)
    bare = (bare_before + bare_model_rate(params)) / 2
    per_image_rate = images / (warm - load)
    decode_rate = loader_rate(params)
    return {
        "images": images,
        "bare_model_images_per_second": round(bare, 1),
        "stage_seconds": round(first, 2),
        "stage_seconds_warm_process": round(warm, 2),
        "model_load_seconds": round(load, 2),
        "images_per_second": round(per_image_rate, 1),
        "ratio_to_bare_model": round(per_image_rate / bare, 3),
        "end_to_end_ratio_to_bare_model": round(images / first / bare, 3),
        "decode_images_per_second": round(decode_rate, 1),
        "decode_share": round(per_image_rate / decode_rate, 3),
        "clean_images_per_second": round(images / clean_seconds, 1),
    }


def copy_fidelity(params) -> dict:
    """What the lossy copies cost: cosine similarity of each training image's embedding as featurize made it
    (through clean's resized copy) to its embedding from a full decode of the file, beside the same figure
    for the file decoded at reduced scale (how featurize read it before the copies)."""
    from reprotune.data.datasets import ManifestImages, make_loader
    from reprotune.models.backbones import load_backbone
    from reprotune.models.inference import outputs
    from reprotune.pipeline.layout import Layout
    from stages.featurize import prepare

    layout = Layout(params.paths)
    rows = layout.read_manifest(layout.split_manifest, {"label": str})
    rows = rows[rows["split"] == "train"]
    backbone = load_backbone(params.backbone)
    device, channels_last = torch.device("cpu"), params.backbone.channels_last
    batch = params.featurize.batch_size
    model = prepare(backbone, device, channels_last)

    def from_files(decode_side: int | None) -> np.ndarray:
        images = ManifestImages(
            rows["path"].tolist(),
            [0] * len(rows),
            backbone.data.eval_transform(),
            tuple(params.clean.background),
            decode_side,
        )
        loader = make_loader(images, batch, 0)
        return torch.cat(list(outputs(model, loader, device, channels_last, pad_to=batch))).numpy()

    def cosine(a: np.ndarray, b: np.ndarray) -> dict:
        value = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return {"min": round(float(value.min()), 4), "mean": round(float(value.mean()), 4)}

    full = from_files(None)
    return {
        "images": len(rows),
        "copied": int((rows["resized"] >= 0).sum()),
        "copies_cosine_to_full_decode": cosine(
            load_file(layout.features_file("train"))["embeddings"].numpy(), full
        ),
        "reduced_scale_files_cosine_to_full_decode": cosine(from_files(backbone.data.eval_decode_side), full),
    }


def peak_rss_mib(workdir: Path, raw: Path) -> float:
    """Peak RSS of featurize over the photos in `raw`, in a fresh process (cold cache)."""
    params, _ = prepared(workdir, raw)
    code = (
        "import resource, sys, yaml\n"
        "from reprotune.pipeline import params\n"
        "from stages.featurize import featurize\n"
        "featurize(params.validate(yaml.safe_load(sys.argv[1])))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, yaml.safe_dump(params.model_dump(mode="json"))],
        capture_output=True,
        text=True,
        check=True,
    )
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="0.2 MP JPEGs in the first folder")
    parser.add_argument("--mixed", type=int, default=64, help="images of each size in the mixed folder")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        small = photo_folder(root / "small-raw", options.images, ["0.2MP"])
        mixed = photo_folder(root / "mixed-raw", options.mixed, list(SIZES), seed=1)
        params = bench_params(root / "bare", small)
        results = {
            "threads": torch.get_num_threads(),
            "batch_size": params.featurize.batch_size,
            "input_size": params.backbone.input_size,
            "channels_last": params.backbone.channels_last,
            "small_0.2MP": throughput(root / "small", small),
            "mixed_0.2_2_12MP": throughput(root / "mixed", mixed),
        }
        results["resized_copy_fidelity_mixed"] = copy_fidelity(bench_params(root / "mixed" / "first", mixed))
        # The cache: the small folder's cache is warm now.
        warm = stage_seconds(prepared(root / "small" / "first", small)[0])
        make_photos(small / "class_0", 1, SIZES["0.2MP"], "added", seed=99)
        one_more = stage_seconds(prepared(root / "small" / "first", small)[0])
        cold = results["small_0.2MP"]["stage_seconds"]
        results["cache"] = {
            "cold_seconds": cold,
            "warm_seconds": round(warm, 2),
            "one_image_added_seconds": round(one_more, 2),
            "one_image_added_ratio_to_cold": round(one_more / cold, 3),
        }
        half = photo_folder(root / "half-raw", options.images // 2, ["0.2MP"], seed=3)
        full = photo_folder(root / "full-raw", options.images, ["0.2MP"], seed=4)
        rss = [peak_rss_mib(root / "rss-half", half), peak_rss_mib(root / "rss-full", full)]
        results["memory"] = {
            "images": [options.images // 2, options.images],
            "peak_rss_mib": rss,
            "ratio": round(rss[1] / rss[0], 3),
        }
    save("featurize", results)
    small_result, mixed_result = results["small_0.2MP"], results["mixed_0.2_2_12MP"]
    fidelity = results["resized_copy_fidelity_mixed"]
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
            (
                "  end to end",
                f"ratio {small_result['end_to_end_ratio_to_bare_model']}",
                "first run: model load and first-pass set-up included",
            ),
            (
                "  end to end, mixed",
                f"ratio {mixed_result['end_to_end_ratio_to_bare_model']}",
                "",
            ),
            ("decode share 0.2 MP", f"{small_result['decode_share']}", "of the stage's per-image time"),
            ("decode share mixed", f"{mixed_result['decode_share']}", ""),
            (
                "clean 0.2 MP / mixed",
                f"{small_result['clean_images_per_second']} / {mixed_result['clean_images_per_second']}",
                "img/s: the check decode, hashes and resized copies, before featurize",
            ),
            (
                "copies vs full decode",
                "cosine {min} / {mean}".format(**fidelity["copies_cosine_to_full_decode"]),
                "least / mean over the mixed folder's training images; reduced-scale files: "
                "{min} / {mean}".format(**fidelity["reduced_scale_files_cosine_to_full_decode"]),
            ),
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
