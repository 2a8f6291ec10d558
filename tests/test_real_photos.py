"""The 60 real photographs (cats and dogs, ../shared/data/cats-dogs, which a user's clone does not have: the test
skips without them) through `dvc repro export` as a user's own folder: the exported int8 file agrees with torch
on the test split as export.min_int8_agreement asks, and `reprotune predict` runs it after its check on this
CPU. A stress test (marker `slow`): about five minutes on 2 cores."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_project
from tests.test_pipeline import run

PHOTOS = ROOT.parent / "shared" / "data" / "cats-dogs"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not PHOTOS.is_dir(), reason="needs the real photos in ../shared/data/cats-dogs"),
]


def test_real_photos_ship_an_int8_file_that_agrees_and_predict_runs_it(tmp_path: Path):
    root = copy_project(tmp_path / "project")
    shutil.copytree(PHOTOS, root / "data" / "raw", dirs_exist_ok=True)
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "60 photos"], root)
    run(["dvc", "repro", "export"], root)

    card = json.loads((root / "models" / "export" / "model.json").read_text())
    exported = json.loads((root / "reports" / "export.json").read_text())
    minimum = card["int8"]["test_top1_agreement"]
    assert card["int8"]["shipped"], card["int8"]["why"]
    assert exported["onnx_int8"]["top1_agreement"] == minimum >= 0.99
    assert exported["onnx_fp32"]["top1_agreement"] == 1.0

    out = tmp_path / "labels.csv"
    reprotune = str(Path(sys.executable).parent / "reprotune")
    used = run(
        [reprotune, "predict", str(PHOTOS), "--model", str(root / "models" / "export"), "-o", str(out)],
        tmp_path,
    )
    assert "60 of 60 files labelled with" in used and "model.int8.onnx" in used, used


def test_the_embedding_check_lists_a_copy_the_hashes_missed_and_no_distinct_photo(tmp_path: Path):
    """The 60 photos in given train and test folders, plus, in test, a copy of a train photo cropped 3% from
    two sides and recompressed (JPEG quality 70) that lands beyond clean's grouping distance, so that split
    cannot keep it with its original: leakage lists that pair, and no pair of distinct photos."""
    import csv

    import numpy as np
    import yaml
    from PIL import Image

    from reprotune.data.duplicates import image_hashes, near_pairs
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.resolve import for_data
    from stages import clean, featurize, ingest, leakage, split

    raw = tmp_path / "raw"
    for label in ("cat", "dog"):
        photos = sorted((PHOTOS / label).glob("*.jpg"))
        for n, photo in enumerate(photos):
            folder = raw / ("train" if n % 3 else "test") / label
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, folder / photo.name)
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings["paths"] = {key: str(tmp_path / value) for key, value in settings["paths"].items()}
    settings["paths"]["raw"] = str(raw)
    params = for_data(params_module.validate(settings))
    grouping = params.clean.near_duplicate_distance

    def copied(photo: Path) -> Image.Image:
        with Image.open(photo) as image:
            w, h = image.size
            cropped = image.convert("RGB").crop((round(w * 0.03), round(h * 0.03), w, h))
        cropped.save(tmp_path / "copy.jpg", quality=70)
        return Image.open(tmp_path / "copy.jpg").convert("RGB")

    def distance(photo: Path) -> int:
        with Image.open(photo) as image:
            pair = np.stack([image_hashes(image.convert("RGB")), image_hashes(copied(photo))])
        return near_pairs(pair, 256).as_dict()[(0, 1)]

    original = next(p for p in sorted((raw / "train").rglob("*.jpg")) if distance(p) > grouping)
    copy = raw / "test" / original.parent.name / f"copy-of-{original.name}"
    copied(original)
    shutil.copy(tmp_path / "copy.jpg", copy)
    for stage in (ingest.ingest, clean.clean, split.split, featurize.featurize, leakage.leakage):
        stage(params)

    split_report = json.loads((Path(params.paths.reports) / "split.json").read_text())
    assert split_report["leakage"]["near_duplicate_pairs_across_splits"] == 0  # the hashes did not group it
    with open(Path(params.paths.reports) / "leakage.csv", encoding="utf-8") as table:
        listed = [{row["path_a"], row["path_b"]} for row in csv.DictReader(table)]
    assert listed == [{str(original), str(copy)}], listed
