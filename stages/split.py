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

from reprotune.modalities import cleaning as modality_cleaning
from reprotune.modalities.cleaning import Cleaning
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, write_json, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import SPLITS, Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.markdown import lines_of

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


def split_origin(splits: dict, items: str) -> str:
    """Which splits came from the data's split folders and which were carved, from what and how much."""
    given = ", ".join(f"{name}/" for name in splits["given"])
    carved = "; ".join(
        f"{name} carved from {entry['from']} ({entry['fraction']:.0%} of each class, {entry['images']} {items})"
        for name, entry in splits["carved"].items()
    )
    if not given:
        return f"no split folders; {carved}."
    return f"given as {given}" + (f"; {carved}." if carved else ".")


def section(report: dict, cleaning: Cleaning) -> list[str]:
    """split's part of report.md: duplicates across splits, where the splits came from, their sizes."""
    apart = len(report.get("groups_straddling_given_splits", []))
    classes = {label for counts in report["counts"].values() for label in counts}
    return [
        f"- {cleaning.leakage_sentence(report['leakage'])}"
        + (f" Duplicate groups that given split folders put apart: {apart}." if apart else ""),
        f"- Splits: {split_origin(report, cleaning.items)}",
        f"- {len(classes)} classes. {cleaning.items.capitalize()} per split: "
        + ", ".join(f"{split} {sum(counts.values())}" for split, counts in report["counts"].items())
        + ". Details: `cleaning.md`, `cleaning.json`, `split.json`.",
    ]


def split(params: Params) -> None:
    layout = Layout(params.paths)
    cleaning = modality_cleaning.of(layout.modality)
    settings = params.split
    kept = layout.read_manifest(layout.clean_manifest, {"label": str, "given_split": str})
    given = kept["given_split"] != ""
    if given.any() and not given.all():
        raise InputError(f"{layout.raw}: {cleaning.mixed_splits}")
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
    spellings = kept.groupby(kept["label"].str.casefold())["label"].unique()
    clashing = [" and ".join(map(repr, sorted(labels))) for labels in spellings if len(labels) > 1]
    if clashing:  # train/Cat beside val/cat: two classes to the model, one to the person who named them
        raise InputError(
            f"{layout.raw}: labels that differ only in case: {'; '.join(clashing)}; spell each class the "
            "same way in every split folder and file (they would be learned as different classes)"
        )
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
    report["leakage"] = cleaning.leakage(kept, layout, params.clean.near_duplicate_distance)
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
        kept[["path", "label", "split", "group", "sha256", cleaning.split_column]].to_csv(
            staging / layout.split_manifest.name, index=False
        )
    write_json(layout.split_report, report)
    write_text(layout.report_section("split"), lines_of(section(report, cleaning)))
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
