import json
from pathlib import Path

import pandas as pd
import pytest

from stages import clean, ingest, split
from tests.conftest import make_class_folder, noisy_image


def run_to_split(params) -> tuple[pd.DataFrame, dict]:
    ingest.ingest(params)
    clean.clean(params)
    split.split(params)
    manifest = pd.read_csv(Path(params.paths.splits) / "manifest.csv", dtype={"label": str})
    return manifest, json.loads((Path(params.paths.reports) / "split.json").read_text())


def test_stratified_and_duplicate_groups_stay_together(tiny_params):
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=20)
    for n in range(5):  # five copies of one red image: one group of six
        (raw / "red" / f"dup{n}.png").write_bytes((raw / "red" / "000.png").read_bytes())
    manifest, report = run_to_split(tiny_params)
    assert manifest.groupby("group")["split"].nunique().max() == 1
    counts = manifest.groupby(["label", "split"]).size().unstack()
    assert (counts["test"] >= 3).all() and (counts["val"] >= 3).all()
    assert counts.loc["green", ["train", "val", "test"]].tolist() == [12, 4, 4]
    assert set(report["counts"]) == {"train", "val", "test"}


def test_split_is_seeded(tiny_params, tmp_path):
    make_class_folder(Path(tiny_params.paths.raw), per_class=10)
    first, _ = run_to_split(tiny_params)
    second, _ = run_to_split(tiny_params)
    assert first.equals(second)
    reseeded = tiny_params.model_copy(update={"split": tiny_params.split.model_copy(update={"seed": 7})})
    third, _ = run_to_split(reseeded)
    assert not first["split"].equals(third["split"])


def test_given_splits_win_and_val_is_carved_from_train(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=10, split="train")
    make_class_folder(raw, per_class=3, split="test", seed=1)
    manifest, report = run_to_split(tiny_params)
    test_rows = manifest[manifest["split"] == "test"]
    assert len(test_rows) == 9 and all("/test/" in p for p in test_rows["path"])
    assert report["val_carved_from_train"] is True
    val_rows = manifest[manifest["split"] == "val"]
    assert len(val_rows) > 0 and all("/train/" in p for p in val_rows["path"])


def test_single_image_class_goes_to_train(tiny_params):
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=10)
    (raw / "lonely").mkdir()
    noisy_image((128, 128, 0), 4242).save(raw / "lonely" / "one.png")
    keep_singletons = tiny_params.clean.model_copy(update={"min_class_size": 1})
    manifest, report = run_to_split(tiny_params.model_copy(update={"clean": keep_singletons}))
    assert manifest.loc[manifest["label"] == "lonely", "split"].tolist() == ["train"]
    assert report["classes_missing_from"]["test"] == ["lonely"]


@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.3, 0.3)])
def test_fractions_are_respected_per_class(tiny_params, fractions):
    make_class_folder(Path(tiny_params.paths.raw), per_class=20)
    settings = tiny_params.split.model_copy(
        update={"val_fraction": fractions[0], "test_fraction": fractions[1]}
    )
    manifest, _ = run_to_split(tiny_params.model_copy(update={"split": settings}))
    counts = manifest.groupby(["label", "split"]).size().unstack()
    assert (counts["val"] == round(20 * fractions[0])).all()
    assert (counts["test"] == round(20 * fractions[1])).all()


def test_a_group_straddling_given_splits_is_reported(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=6, split="train")
    make_class_folder(raw, per_class=3, split="val", seed=1)
    make_class_folder(raw, per_class=3, split="test", seed=2)
    (raw / "test" / "red" / "leak.png").write_bytes((raw / "train" / "red" / "000.png").read_bytes())
    manifest, report = run_to_split(tiny_params)
    assert report["groups_straddling_given_splits"] == [
        sorted([str(raw / "test" / "red" / "leak.png"), str(raw / "train" / "red" / "000.png")])
    ]
    assert report["leakage"]["near_duplicate_pairs_across_splits"] == 1
    assert manifest.loc[manifest["path"].str.endswith("leak.png"), "split"].tolist() == ["test"]  # given wins
