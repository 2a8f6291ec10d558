"""Benchmark finetune's training copies: epochs over photos read from the files against read from copies.

    .venv/bin/python -m benchmarks.bench_finetune [--per-size 32] [--epochs 3]

A folder with equal numbers of 0.2, 2 and 12 MP JPEGs goes through ingest, clean, split, featurize and
train_head; then finetune runs with params.yaml's settings (`--epochs` epochs, no early stop): as it
is (each training image decoded once per run and kept resized to the training side), and with the copies
switched off (every epoch decodes every file at reduced scale, as before they existed), alternately, the
best of two runs each. Merged into
reports/bench.json under "finetune".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from benchmarks.bench_featurize import photo_folder, prepared
from benchmarks.photos import SIZES
from benchmarks.results import print_table, save


def finetune_seconds(params, copies: bool) -> float:
    from reprotune.data import resized
    from reprotune.modalities.image import training_data
    from stages import finetune

    def files_only(layout, rows, *_args, **_kwargs):
        """No copies: an empty pack that is never opened, and every row read from its file."""
        return resized.ResizedCopies(layout.training_copies("none")), [resized.NO_COPY] * len(rows)

    started = time.perf_counter()
    if copies:
        finetune.finetune(params)
    else:
        with mock.patch.object(training_data, "training_copies", files_only):
            finetune.finetune(params)
    return time.perf_counter() - started


def main() -> None:
    from stages import featurize, train_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-size", type=int, default=32, help="photos of each size")
    parser.add_argument("--epochs", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        raw = photo_folder(root / "raw", options.per_size, list(SIZES), seed=7)
        params, _ = prepared(root / "work", raw)
        params = params.model_copy(
            update={
                "finetune": params.finetune.model_copy(update={"epochs": options.epochs, "patience": 100}),
            }
        )
        featurize.featurize(params)
        train_head.train_head(params)
        # Alternating, best of two each: the first run in a process also pays one-off kernel set-up.
        runs = [finetune_seconds(params, copies) for copies in (False, True, False, True)]
        from_files, from_copies = min(runs[0::2]), min(runs[1::2])
    result = save(
        "finetune",
        {
            "threads": torch.get_num_threads(),
            "photos": 3 * options.per_size,
            "epochs": options.epochs,
            "input_size": params.backbone.input_size,
            "files_every_epoch_seconds": round(from_files, 1),
            "training_copies_seconds": round(from_copies, 1),
            "speedup": round(from_files / from_copies, 2),
        },
    )
    print_table(
        f"finetune, {result['photos']} photos of 0.2, 2 and 12 MP, {options.epochs} epochs",
        [
            (
                "files every epoch",
                f"{result['files_every_epoch_seconds']} s",
                "reduced-scale decode per epoch",
            ),
            ("training copies", f"{result['training_copies_seconds']} s", f"{result['speedup']}x faster"),
        ],
    )


if __name__ == "__main__":
    main()
