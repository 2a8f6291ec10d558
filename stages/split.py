"""split: assign every kept image to train, val or test.

Stratified by label and seeded; a duplicate group is the unit that is assigned, so identical images never
straddle splits. Split folders given in the raw data win; when only train and test are given, val is
carved out of train the same way.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from reprotune import stage
from reprotune.duplicates import near_pairs
from reprotune.errors import InputError
from reprotune.layout import SPLITS, Layout, atomic_output, write_json
from reprotune.params import Params

log = logging.getLogger(__name__)


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


def leakage(kept: pd.DataFrame, max_distance: int) -> dict:
    """Near-duplicate pairs (phash within max_distance bits) that ended up in different splits: expected 0."""
    pairs = near_pairs(np.array([int(h, 16) for h in kept["phash"]], dtype=np.uint64), max_distance)
    split_of, path_of = kept["split"].to_numpy(), kept["path"].to_numpy()
    across = [(i, j) for i, j in pairs if split_of[i] != split_of[j]]
    return {
        "max_distance": max_distance,
        "near_duplicate_pairs_across_splits": len(across),
        "examples": [
            {"paths": [path_of[i], path_of[j]], "splits": [split_of[i], split_of[j]]} for i, j in across[:20]
        ],
    }


def split(params: Params) -> None:
    layout = Layout(params.paths)
    kept = layout.read_manifest(layout.clean_manifest, {"label": str, "given_split": str})
    given = kept["given_split"] != ""
    groups = kept.groupby("group").agg(label=("label", "first"), size=("path", "size")).reset_index()
    report: dict = {"seed": params.split.seed}
    if given.all():
        kept["split"] = kept["given_split"]
        straddling = kept.groupby("group")["split"].nunique()
        report["groups_straddling_given_splits"] = [
            sorted(kept.loc[kept["group"] == group, "path"]) for group in straddling[straddling > 1].index
        ]
        if not (kept["split"] == "val").any():
            train = kept["split"] == "train"
            train_groups = groups[groups["group"].isin(kept.loc[train, "group"])]
            carved = split_groups(train_groups, params.split.val_fraction, 0.0, params.split.seed)
            kept.loc[train, "split"] = kept.loc[train, "group"].map(carved)
            report["val_carved_from_train"] = True
    elif given.any():
        raise InputError(
            f"{layout.raw}: some images are in split folders and some are not; use one layout for all"
        )
    else:
        assignment = split_groups(
            groups, params.split.val_fraction, params.split.test_fraction, params.split.seed
        )
        kept["split"] = kept["group"].map(assignment)
    missing = sorted(set(kept["label"]) - set(kept.loc[kept["split"] == "train", "label"]))
    if missing:
        raise InputError(f"{layout.raw}: classes with no training image: {', '.join(missing)}")
    for name in ("val", "test"):
        if not (kept["split"] == name).any():
            raise InputError(
                f"{layout.raw}: the {name} split is empty; add images or raise split.{name}_fraction"
            )
    counts = kept.groupby(["split", "label"]).size()
    report["counts"] = {s: {k: int(v) for k, v in counts[s].items()} for s in SPLITS if s in counts}
    report["classes_missing_from"] = {
        s: sorted(set(kept["label"]) - set(report["counts"].get(s, {}))) for s in ("val", "test")
    }
    for name, missing_classes in report["classes_missing_from"].items():
        if missing_classes:
            log.warning("too few images for the %s split in classes: %s", name, ", ".join(missing_classes))
    report["leakage"] = leakage(kept, params.clean.near_duplicate_distance or 0)
    if report["leakage"]["near_duplicate_pairs_across_splits"]:
        log.warning("near-duplicate pairs across splits: %s", report["leakage"]["examples"][:3])
    with atomic_output(layout.splits) as staging:
        staging.mkdir()
        kept[["path", "label", "split", "group", "sha256", "resized"]].to_csv(
            staging / layout.split_manifest.name, index=False
        )
    write_json(layout.split_report, report)
    log.info("split: %s", {s: int((kept["split"] == s).sum()) for s in SPLITS})


def main() -> None:
    stage.run(split)


if __name__ == "__main__":
    main()
