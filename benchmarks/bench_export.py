"""Benchmark the exported models and predict: single-image latency (p50, p95) and batch-32 throughput of
torch float32, ONNX float32 and ONNX int8 on this machine's threads, and `reprotune predict`'s throughput on
a folder of 0.2 MP JPEGs (decode, checks and resize in one thread per core ahead of the model, the model,
the rows) against the bare forward pass of the file it ran, for the float32 file and for what
`--precision auto` runs here (int8 where it passes its check); each the median of three alternating rounds.

    .venv/bin/python -m benchmarks.bench_export [--runs 50] [--images 256]

Needs `dvc repro` to have run (models/finetuned, models/export). Figures are ratios within one run; the
machine is shared and noisy. Results are merged into reports/bench.json under "export".
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.photos import SIZES, make_photos
from benchmarks.results import print_table, save
from reprotune.training.devices import cpu_instruction_sets

PREPROCESS_THREADS = os.cpu_count() or 1  # as `reprotune predict` runs


def latency(run, image: np.ndarray, runs: int) -> dict:
    run(image)  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - started)
    return {
        "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
        "p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
    }


def throughput(run, batch: np.ndarray, runs: int) -> float:
    run(batch)
    started = time.perf_counter()
    for _ in range(runs):
        run(batch)
    return round(runs * len(batch) / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--images", type=int, default=256)
    options = parser.parse_args()

    from reprotune.models.classifier import load_trained_classifier
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.atomic_io import read_json
    from reprotune.pipeline.layout import Layout
    from reprotune.pipeline.stage import as_run
    from reprotune.serving import predict
    from reprotune.serving.onnx_models import OnnxClassifier

    params = as_run(params_module.load())  # the size the model was trained and exported at
    layout = Layout(params.paths)
    classes = read_json(layout.features_meta)["classes"]
    model, backbone = load_trained_classifier(params.backbone, layout.finetuned_weights, len(classes))
    side = backbone.data.input_size
    channels_last = params.backbone.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def torch_run(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images)
        return model(batch.contiguous(memory_format=torch.channels_last) if channels_last else batch).numpy()

    runners = {
        "torch_fp32": torch_run,
        "onnx_fp32": OnnxClassifier(layout.onnx_model).logits,
    }
    if layout.int8_model.is_file():  # export ships it only where it agrees with torch (reports/export.md)
        runners["onnx_int8"] = OnnxClassifier(layout.int8_model).logits
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, side, side), dtype=np.float32)
    batch = rng.standard_normal((32, 3, side, side), dtype=np.float32)
    models = {
        name: latency(run, one, options.runs)
        | {"batch32_images_per_second": throughput(run, batch, max(3, options.runs // 10))}
        for name, run in runners.items()
    }

    with tempfile.TemporaryDirectory() as folder:
        paths = make_photos(Path(folder), options.images, SIZES["0.2MP"])
        rates: dict[str, list[tuple[float, float]]] = {"fp32": [], "auto": []}
        chosen = {}
        for _ in range(3):  # alternating rounds: a noisy machine slows both sides of a ratio alike
            for precision in rates:
                loaded = predict.load_model(str(layout.exported), torch.device("cpu"), precision=precision)
                chosen[precision] = Path(loaded.source).name
                started = time.perf_counter()
                rows = predict.predict_files(paths, loaded, 3, True, 32, PREPROCESS_THREADS)
                rate = len(rows) / (time.perf_counter() - started)
                bare = throughput(
                    OnnxClassifier(Path(loaded.source)).logits, batch, max(1, options.images // 32)
                )
                rates[precision].append((rate, bare))
    medians = {
        precision: (float(np.median([r for r, _ in pairs])), float(np.median([b for _, b in pairs])))
        for precision, pairs in rates.items()
    }
    result = save(
        "export",
        {
            "threads": torch.get_num_threads(),
            # int8 kernels differ by instruction set (VNNI or not): the figures hold for this class of CPU
            "cpu_instruction_sets": " ".join(cpu_instruction_sets()) or "unknown",
            "models": models,
            **(
                {
                    "int8_latency_speedup_vs_onnx_fp32": round(
                        models["onnx_fp32"]["p50_ms"] / models["onnx_int8"]["p50_ms"], 2
                    ),
                    "int8_throughput_ratio_vs_onnx_fp32": round(
                        models["onnx_int8"]["batch32_images_per_second"]
                        / models["onnx_fp32"]["batch32_images_per_second"],
                        2,
                    ),
                }
                if "onnx_int8" in models
                else {"int8": "not shipped by export (reports/export.md says why)"}
            ),
            "predict": {
                precision: {
                    "file": chosen[precision],
                    "images_per_second": round(rate, 1),
                    "bare_forward_images_per_second": round(bare, 1),
                    "ratio": round(rate / bare, 3),
                }
                for precision, (rate, bare) in medians.items()
            },
        },
    )
    print_table(
        f"exported models, {side} px input, {result['threads']} threads, CPU: {result['cpu_instruction_sets']}",
        [
            (
                name,
                f"p50 {row['p50_ms']} ms",
                f"p95 {row['p95_ms']} ms; batch 32: {row['batch32_images_per_second']} img/s",
            )
            for name, row in models.items()
        ]
        + (
            [
                (
                    "int8 vs ONNX fp32",
                    f"{result['int8_latency_speedup_vs_onnx_fp32']}x",
                    f"throughput ratio {result['int8_throughput_ratio_vs_onnx_fp32']}",
                )
            ]
            if "onnx_int8" in models
            else []
        )
        + [
            (
                f"predict --precision {precision}, 0.2 MP JPEGs",
                f"{row['images_per_second']} img/s",
                f"{row['ratio']} of the bare forward of {row['file']} ({row['bare_forward_images_per_second']} img/s)",
            )
            for precision, row in result["predict"].items()
        ],
    )


if __name__ == "__main__":
    main()
