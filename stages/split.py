"""split: assign every kept image (or text) to train, val or test.

Stratified by label and seeded; a duplicate group is the unit that is assigned, so identical and
near-identical images never straddle splits. Split folders given in the raw data win: their images stay in
their split, and a split with no folder is carved out of train/ the same way (val by split.val_fraction, test
by split.test_fraction, of each class's training images). Every layout: train/ alone, train/ + val/,
train/ + test/, all three; without split folders everything is carved from all images. What was given and
what was carved is in split.json, the log and the report.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from reprotune import stage
from reprotune.atomic_io import atomic_output, write_json
from reprotune.duplicates import load_hashes, near_pairs
from reprotune.errors import InputError
from reprotune.layout import SPLITS, Layout
from reprotune.params import Params

log = logging.getLogger(__name__)

# Bits beyond clean.near_duplicate_distance at which the leakage check still reports a pair (as `similar`).
LEAKAGE_MARGIN = 8


def split_groups(
    groups: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> dict[int, str]:
    """groups: one row per duplicate group (group, label, size). Per label, shuffle its groups and fill test,
    then val, up to their fractions of the label's images; the rest, and always at least one group, is train."""
    rng = np.random.default_rng(seed)
    assignment: dict[int, str] = {}
    for _, of_label in groups.groupby("label", sort=True):
        order = of_label.iloc[rng.permutation(len(of_label))]
        total = int(order["size"].sum())
        quota = {
            "test": math.floor(total * test_fraction + 0.5),
            "val": math.floor(total * val_fraction + 0.5),
        }
        filled = {"test": 0, "val": 0}
        for position, (group, size) in enumerate(zip(order["group"], order["size"], strict=True)):
            remaining_groups = len(order) - position
            target = "train"
            for split in ("test", "val"):
                if filled[split] + size <= quota[split] and remaining_groups > 1:
                    target = split
                    break
            if target != "train":
                filled[target] += size
            assignment[int(group)] = target
        if "train" not in {assignment[int(g)] for g in order["group"]}:
            raise AssertionError("each label keeps at least one group in train")
    return assignment


def leakage(kept: pd.DataFrame, hashes: np.ndarray, grouping_distance: int | None) -> dict:
    """Image pairs in different splits, found by the detector clean groups with but LEAKAGE_MARGIN bits more
    sensitive, so that a copy the grouping missed shows up here instead of as 0. Pairs within the grouping
    distance can only straddle splits when given split folders put them apart; the rest are `similar`."""
    grouping = grouping_distance or 0
    checked = grouping + LEAKAGE_MARGIN
    split_of, path_of = kept["split"].to_numpy(), kept["path"].to_numpy()
    across = sorted(
        (distance, i, j)
        for (i, j), distance in near_pairs(hashes, checked).items()
        if split_of[i] != split_of[j]
    )
    near = [pair for pair in across if pair[0] <= grouping]
    similar = [pair for pair in across if pair[0] > grouping]

    def examples(pairs: list[tuple[int, int, int]]) -> list[dict]:
        return [
            {"paths": [path_of[i], path_of[j]], "splits": [split_of[i], split_of[j]], "distance": d}
            for d, i, j in pairs[:20]
        ]

    return {
        "grouping_distance": grouping_distance,
        "checked_distance": checked,
        "near_duplicate_pairs_across_splits": len(near),
        "similar_pairs_across_splits": len(similar),
        "examples": examples(near),
        "similar_examples": examples(similar),
    }


def text_leakage(kept: pd.DataFrame) -> dict:
    """Pairs of texts in one duplicate group (equal after normalisation) but in different splits: only given
    splits can put them apart. There is no looser detector for texts, so nothing is `similar`."""
    pairs = []
    for _, members in kept.groupby("group", sort=True):
        if members["split"].nunique() < 2:
            continue
        rows = list(members[["path", "split"]].itertuples(index=False))
        pairs += [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :] if a.split != b.split]
    return {
        "grouping": "texts equal after normalising case, whitespace and punctuation",
        "grouping_distance": None,
        "checked_distance": None,
        "near_duplicate_pairs_across_splits": len(pairs),
        "similar_pairs_across_splits": 0,
        "examples": [{"paths": [a.path, b.path], "splits": [a.split, b.split]} for a, b in pairs[:20]],
        "similar_examples": [],
    }


def carve(kept: pd.DataFrame, pool: pd.Series, fractions: dict[str, float], seed: int) -> dict[str, int]:
    """Assign the `pool` rows (given or implied train) to train and the splits in `fractions`, stratified by
    label with duplicate groups whole; return how many images went to each carved split."""
    rows = kept[pool]
    groups = rows.groupby("group").agg(label=("label", "first"), size=("path", "size")).reset_index()
    assignment = split_groups(groups, fractions.get("val", 0.0), fractions.get("test", 0.0), seed)
    kept.loc[pool, "split"] = rows["group"].map(assignment)
    return {name: int((kept.loc[pool, "split"] == name).sum()) for name in fractions}


def empty_split_error(
    layout: Layout, kept: pd.DataFrame, name: str, fraction: float, source: str
) -> InputError:
    """Why a carved split got no image, with a remedy that would work."""
    spare = kept[kept["split"].isin(["train", name])].groupby("label")["group"].nunique()
    if (spare > 1).any():
        remedy = f"raise split.{name}_fraction (now {fraction}) or add images"
    else:
        remedy = "add images: every class has one image (or one group of duplicates), which stays in train"
    return InputError(f"{layout.raw}: the {name} split is empty after carving it from {source}; {remedy}")


def split(params: Params) -> None:
    layout = Layout(params.paths)
    settings = params.split
    kept = layout.read_manifest(layout.clean_manifest, {"label": str, "given_split": str})
    given = kept["given_split"] != ""
    if given.any() and not given.all():
        raise InputError(
            f"{layout.raw}: some rows come from split files (train, val, test) or a split column and some do "
            "not; give every row a split, or none"
            if layout.modality == "text"
            else f"{layout.raw}: some images are in split folders and some are not; use one layout for all"
        )
    given_splits = [name for name in SPLITS if (kept["given_split"] == name).any()]
    if given_splits and "train" not in given_splits:
        raise InputError(
            f"{layout.raw}: split folders {', '.join(f'{s}/' for s in given_splits)} hold images but train/ "
            f"holds none that clean kept; put the training images in {layout.raw}/train/<class>/"
        )
    fractions = {"val": settings.val_fraction, "test": settings.test_fraction}
    to_carve = {name: fractions[name] for name in ("val", "test") if name not in given_splits}
    for name, fraction in to_carve.items():
        if fraction == 0:
            raise InputError(
                f"params.yaml: split.{name}_fraction is 0 and {layout.raw} has no {name}/ split folder, so "
                f"there would be no {name} split; set split.{name}_fraction above 0 or add {layout.raw}/{name}/"
            )
    kept["split"] = kept["given_split"] if given_splits else "train"
    carved = carve(kept, kept["split"] == "train", to_carve, settings.seed)
    source = "train/" if given_splits else "all images"
    report: dict = {
        "seed": settings.seed,
        "given": given_splits,
        "carved": {
            name: {"from": source, "fraction": to_carve[name], "images": carved[name]} for name in carved
        },
    }
    if given_splits:
        straddling = kept.groupby("group")["split"].nunique()
        report["groups_straddling_given_splits"] = [
            sorted(kept.loc[kept["group"] == group, "path"]) for group in straddling[straddling > 1].index
        ]
    missing = sorted(set(kept["label"]) - set(kept.loc[kept["split"] == "train", "label"]))
    if missing:
        raise InputError(
            f"{layout.raw}: classes with no training image: {', '.join(missing)}; every class needs images in "
            "train/ (a class only in val/ or test/ cannot be learned)"
        )
    for name, fraction in to_carve.items():
        if not (kept["split"] == name).any():
            raise empty_split_error(layout, kept, name, fraction, source)
    counts = kept.groupby(["split", "label"]).size()
    report["counts"] = {s: {k: int(v) for k, v in counts[s].items()} for s in SPLITS if s in counts}
    report["classes_missing_from"] = {
        s: sorted(set(kept["label"]) - set(report["counts"].get(s, {}))) for s in ("val", "test")
    }
    for name, missing_classes in report["classes_missing_from"].items():
        if missing_classes:
            log.warning("too few images for the %s split in classes: %s", name, ", ".join(missing_classes))
    text = layout.modality == "text"
    report["leakage"] = (
        text_leakage(kept)
        if text
        else leakage(kept, load_hashes(layout.duplicate_hashes), params.clean.near_duplicate_distance)
    )
    if report["leakage"]["near_duplicate_pairs_across_splits"]:
        log.warning("near-duplicate pairs across splits: %s", report["leakage"]["examples"][:3])
    if report["leakage"]["similar_pairs_across_splits"]:
        log.info(
            "%d similar pairs across splits (within %d bits, not grouped), listed in %s for review",
            report["leakage"]["similar_pairs_across_splits"],
            report["leakage"]["checked_distance"],
            layout.split_report,
        )
    with atomic_output(layout.splits) as staging:
        staging.mkdir()
        kept[["path", "label", "split", "group", "sha256", "text" if text else "resized"]].to_csv(
            staging / layout.split_manifest.name, index=False
        )
    write_json(layout.split_report, report)
    log.info(
        "split: %s; given %s; carved %s",
        {s: int((kept["split"] == s).sum()) for s in SPLITS},
        given_splits or "none",
        {name: f"{count} images from {source}" for name, count in carved.items()} or "nothing",
    )


def main() -> None:
    stage.run(split)


if __name__ == "__main__":
    main()
