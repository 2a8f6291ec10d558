import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotune.data.duplicates import HASHES, WORDS
from reprotune.modalities.image import cleaning as image_cleaning
from reprotune.pipeline.errors import InputError
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


# Every layout of given split folders: images per class in each given folder, and what must be carved.
LAYOUTS = {
    "train": ({"train": 20}, ["val", "test"]),
    "train+val": ({"train": 20, "val": 4}, ["test"]),
    "train+test": ({"train": 20, "test": 4}, ["val"]),
    "train+val+test": ({"train": 20, "val": 4, "test": 4}, []),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_of_split_folders_works_and_says_what_was_carved(tiny_params, layout):
    given, carved = LAYOUTS[layout]
    raw = Path(tiny_params.paths.raw)
    for seed, (folder, per_class) in enumerate(given.items()):
        make_class_folder(raw, per_class=per_class, split=folder, seed=seed)
    manifest, report = run_to_split(tiny_params)
    assert report["given"] == list(given)
    assert sorted(report["carved"]) == sorted(carved)
    for name in given:  # a given val/ or test/ stays that split; train/ also feeds what is carved
        in_folder = manifest.loc[manifest["path"].str.contains(f"/{name}/"), "split"]
        assert set(in_folder) == ({name} if name != "train" else {"train", *carved})
        if name != "train":
            assert (manifest["split"] == name).sum() == len(in_folder)
    for name in carved:  # a carved split comes out of train/, stratified, at its fraction of train/
        rows = manifest[manifest["split"] == name]
        assert all("/train/" in path for path in rows["path"])
        fraction = getattr(tiny_params.split, f"{name}_fraction")
        assert (rows.groupby("label").size() == round(20 * fraction)).all()
        assert report["carved"][name] == {"from": "train/", "fraction": fraction, "images": len(rows)}
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("group")["split"].nunique().max() == 1


def test_a_carved_split_leaves_a_one_image_class_in_train(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=10, split="train")
    make_class_folder(raw, per_class=3, split="val", seed=1)
    for folder, seed in (("train", 4242), ("val", 4243)):
        (raw / folder / "lonely").mkdir()
        noisy_image((128, 128, 0), seed).save(raw / folder / "lonely" / "one.png")
    keep_singletons = tiny_params.clean.model_copy(update={"min_class_size": 1})
    manifest, report = run_to_split(tiny_params.model_copy(update={"clean": keep_singletons}))
    assert manifest.loc[manifest["path"].str.contains("/train/lonely/"), "split"].tolist() == ["train"]
    assert report["classes_missing_from"]["test"] == ["lonely"]
    assert report["carved"]["test"]["images"] == 6  # 2 of each 10-image class at test_fraction 0.2


def test_split_folders_without_train_are_refused_naming_train(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=5, split="val")
    make_class_folder(raw, per_class=5, split="test", seed=1)
    with pytest.raises(InputError, match=r"val/, test/ hold images but train/ holds none"):
        run_to_split(tiny_params)


def test_labels_that_differ_only_in_case_are_refused_naming_both(tiny_params):
    """train/red beside val/Red: two classes to the model, and then "no training image" for one of them;
    the error names the two spellings instead."""
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=6, split="train")
    make_class_folder(raw, per_class=3, split="val", seed=1)
    (raw / "val" / "red").rename(raw / "val" / "Red")
    with pytest.raises(InputError, match=r"labels that differ only in case: 'Red' and 'red'; spell each"):
        run_to_split(tiny_params)


def test_a_missing_folder_with_a_zero_fraction_names_the_key(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=10, split="train")
    make_class_folder(raw, per_class=3, split="val", seed=1)
    no_test = tiny_params.split.model_copy(update={"test_fraction": 0.0})
    with pytest.raises(InputError, match=r"split.test_fraction is 0 and .* has no test/ split folder"):
        run_to_split(tiny_params.model_copy(update={"split": no_test}))


def test_an_empty_carved_split_suggests_only_what_would_work(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=2, split="train")
    make_class_folder(raw, per_class=2, split="val", seed=1)
    small = tiny_params.split.model_copy(update={"test_fraction": 0.1})  # 2 x 0.1 rounds to no image
    with pytest.raises(InputError, match=r"test split is empty .* raise split.test_fraction \(now 0.1\)"):
        run_to_split(tiny_params.model_copy(update={"split": small}))
    raised = tiny_params.split.model_copy(update={"test_fraction": 0.3})  # the suggested remedy works
    manifest, _ = run_to_split(tiny_params.model_copy(update={"split": raised}))
    assert (manifest["split"] == "test").sum() == 3


def test_the_leakage_check_is_wider_than_grouping():
    """A pair a little beyond the grouping distance, in two splits, is reported (as similar), not missed."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, (3, HASHES, WORDS), dtype=np.uint64)
    hashes[1] = hashes[0]
    hashes[1, :, 0] ^= np.uint64(
        (1 << (image_cleaning.LEAKAGE_MARGIN // 2 + 40)) - 1
    )  # 44 bits flipped in every hash
    kept = pd.DataFrame({"path": ["a", "b", "c"], "split": ["train", "test", "test"]})
    found = image_cleaning.leakage(kept, hashes, 40)
    assert found["checked_distance"] == 40 + image_cleaning.LEAKAGE_MARGIN
    assert (found["near_duplicate_pairs_across_splits"], found["similar_pairs_across_splits"]) == (0, 1)
    assert found["similar_examples"][0] == {"paths": ["a", "b"], "splits": ["train", "test"], "distance": 44}
    assert image_cleaning.leakage(kept, hashes, 44)["near_duplicate_pairs_across_splits"] == 1


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
