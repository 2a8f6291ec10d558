"""Benchmark the CUDA path: what runs where a GPU is lent, and is skipped (and said so) where none is.

    .venv/bin/python -m benchmarks.bench_gpu [--images 1024] [--device cuda]

1. The bare model's forward throughput on pre-made tensors: float32 and bf16 autocast, each with and without
   channels_last (params.yaml's backbone and batch size).
2. The featurize stage on the device over a folder of 0.2 MP JPEGs (after ingest, clean and split), against
   the float32 bare model in the memory format params.yaml asks for, and the share of its per-image time
   that reading and preprocessing on the CPU take (the data loader alone).
3. JPEG decoding for the eval transform, images/s: Pillow from the files (featurize's path where an image has
   no resized copy), Pillow from clean's resized copies (its path where one has), and torchvision's batched
   GPU decoder (nvJPEG) from the files, resized, cropped and normalised on the device.

`--device cpu` runs the same measurements on the CPU (decoding with torchvision's CPU decoder), which checks
the code on a machine without a GPU. Merged into reports/bench.json under "gpu" ("gpu_bench_on_cpu" with
`--device cpu`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_featurize import loader_rate, photo_folder, prepared, timed
from benchmarks.results import print_table, save


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_rate(params, device: torch.device, bf16: bool, channels_last: bool) -> float:
    """Images/s of the backbone alone on a pre-made batch, as featurize runs it."""
    from reprotune.models.backbones import load_backbone
    from stages.featurize import prepare

    backbone = load_backbone(params.backbone)
    model = prepare(backbone, device, channels_last)
    size = backbone.data.input_size
    batch = torch.randn(params.featurize.batch_size, 3, size, size, device=device)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)

    passes = 20 if device.type == "cuda" else 2

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for _ in range(passes):
                model(batch)
        synchronize(device)

    run()  # warm-up: kernel selection, autotuning
    return passes * len(batch) / timed(run)


def featurize_on(params, device: torch.device, images: int) -> dict:
    """The featurize stage on `device` (model load left out, as in bench_featurize)."""
    from reprotune.models.backbones import load_backbone
    from stages.featurize import featurize

    on_device = params.model_copy(
        update={"featurize": params.featurize.model_copy(update={"device": device.type})}
    )
    load = timed(lambda: load_backbone(on_device.backbone))
    stage = timed(lambda: featurize(on_device))
    return {"stage_seconds": round(stage, 2), "images_per_second": round(images / (stage - load), 1)}


def eval_batch(images: list[torch.Tensor], data, device: torch.device) -> torch.Tensor:
    """uint8 CHW pictures (on `device`) through the eval transform: resize, centre crop, normalise."""
    from torchvision.transforms.v2 import functional as F

    side, crop = data.eval_decode_side, data.input_size
    mean = torch.tensor(data.mean, device=device).view(3, 1, 1)
    std = torch.tensor(data.std, device=device).view(3, 1, 1)
    out = []
    for image in images:
        resized = F.resize(
            image, [side], interpolation=F.InterpolationMode(data.interpolation), antialias=True
        )
        out.append((F.center_crop(resized, [crop, crop]).float() / 255 - mean) / std)
    return torch.stack(out)


def torchvision_decode_rate(paths: list[str], data, device: torch.device, batch: int) -> float:
    """Images/s of torchvision's decoder (batched nvJPEG on CUDA) plus the eval transform on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    encoded = [read_file(path) for path in paths]  # file reading is not part of the decoder's cost

    def run() -> None:
        for start in range(0, len(encoded), batch):
            chunk = encoded[start : start + batch]
            decoded = decode_jpeg(chunk, mode=ImageReadMode.RGB, device=device)
            eval_batch(decoded, data, device)
        synchronize(device)

    run()  # warm-up: decoder handles, kernels
    return len(encoded) / timed(run)


def pillow_file_rate(paths: list[str], params, data) -> float:
    """Images/s of featurize's CPU path for an image without a resized copy (Pillow, reduced-scale)."""
    from reprotune.data.datasets import ManifestImages, make_loader, worker_count

    files = ManifestImages(
        paths, [0] * len(paths), data.eval_transform(), tuple(params.clean.background), data.eval_decode_side
    )
    loader = make_loader(files, params.featurize.batch_size, worker_count(params.featurize.num_workers))
    return len(paths) / timed(lambda: [None for _ in loader])


def main() -> None:
    from reprotune.data.dataconfig import data_config
    from reprotune.pipeline.layout import Layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="0.2 MP JPEGs")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    options = parser.parse_args()
    if options.device == "cuda" and not torch.cuda.is_available():
        save("gpu", {"skipped": "no CUDA device visible"})
        print("\ngpu: skipped, no CUDA device visible (--device cpu runs the same measurements on the CPU)")
        return
    device = torch.device(options.device)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        raw = photo_folder(root / "raw", options.images, ["0.2MP"])
        params, _ = prepared(root / "work", raw)
        layout = Layout(params.paths)
        paths = layout.read_manifest(layout.split_manifest)["path"].tolist()
        data = data_config(params.backbone.name, params.backbone.input_size)
        models = {
            f"{'bf16' if bf16 else 'float32'}{' channels_last' if last else ''}": round(
                model_rate(params, device, bf16, last), 1
            )
            for bf16 in (False, True)
            for last in (False, True)
        }
        stage = featurize_on(params, device, len(paths))
        reference = models[f"float32{' channels_last' if params.backbone.channels_last else ''}"]
        reading = loader_rate(params)
        decoding = {
            "pillow_files": round(pillow_file_rate(paths, params, data), 1),
            "pillow_resized_copies": round(reading, 1),
            f"torchvision_{device.type}_files": round(
                torchvision_decode_rate(paths, data, device, params.featurize.batch_size), 1
            ),
        }
    result = save(
        "gpu" if device.type == "cuda" else "gpu_bench_on_cpu",
        {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "images": len(paths),
            "batch_size": params.featurize.batch_size,
            "input_size": data.input_size,
            "model_images_per_second": models,
            "featurize": stage
            | {
                "ratio_to_bare_model": round(stage["images_per_second"] / reference, 3),
                "decode_share": round(stage["images_per_second"] / reading, 3),
            },
            "decode_images_per_second": decoding,
        },
    )
    print_table(
        f"{result['device']}: batch {result['batch_size']}, {result['input_size']} px",
        [
            *[(f"model {name}", f"{rate} img/s", "pre-made tensors") for name, rate in models.items()],
            (
                "featurize stage",
                f"{stage['images_per_second']} img/s",
                f"ratio {result['featurize']['ratio_to_bare_model']} to float32; "
                f"decode share {result['featurize']['decode_share']}",
            ),
            *[
                (f"decode {name}", f"{rate} img/s", "eval transform included")
                for name, rate in decoding.items()
            ],
        ],
    )


if __name__ == "__main__":
    main()
