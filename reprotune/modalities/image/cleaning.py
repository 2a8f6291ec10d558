"""Cleaning images: decode every file under clean's rules, make its resized copy, hash it for near
duplicates and group copies; and, for split, the leakage check on those hashes.

Each kept image larger than the backbone's eval side is also stored resized to it, once, in
`resized.safetensors` (reprotune/data/resized.py): every later pass reads that small copy instead of the file.
Identical images (same decoded pixels) and near-identical ones (hash sets within
`clean.near_duplicate_distance` bits of 256: resized, recompressed, re-encoded, slightly cropped or framed
copies; reprotune/data/duplicates.py) form one duplicate group, which the split stage keeps inside one split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reprotune.data.checks import CHECK_SIDE, Rejected, decode_checked, pixels_sha256
from reprotune.data.cleaning_steps import (
    DROP,
    cleaning_report,
    enforce_class_size,
    require_two_classes,
    resolve_conflicts,
)
from reprotune.data.dataconfig import DataConfig, data_config
from reprotune.data.duplicates import HASHES, WORDS, image_hashes, load_hashes, near_pairs, save_hashes
from reprotune.data.resized import CopyPackWriter, encode_copy
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Clean, InputChecks
from reprotune.reporting.progress import progress

KEPT_COLUMNS = [
    "path",
    "label",
    "given_split",
    "width",
    "height",
    "sha256",
    "pixels_sha256",
    "resized",
    "group",
]

# Bits beyond clean.near_duplicate_distance at which the leakage check still reports a pair (as `similar`).
LEAKAGE_MARGIN = 8


@dataclass(frozen=True)
class Inspected:
    width: int
    height: int
    pixels_sha256: str
    hashes: np.ndarray  # near-duplicate hash set (reprotune/data/duplicates.py)
    alterations: tuple[str, ...]
    resized_copy: bytes | None


def inspect(path: Path, rules: InputChecks, data: DataConfig) -> Inspected:
    """Decode `path` fully under the rules, or raise Rejected with the reason; make its resized copy for
    the eval side of `data`."""
    found = decode_checked(path, rules, max(CHECK_SIDE, data.eval_decode_side))
    rgb = found.rgb
    alterations = tuple(
        note
        for note in (
            f"converted: {found.mode} to RGB" if found.mode != "RGB" else None,
            found.orientation_note,
        )
        if note
    )
    return Inspected(
        width=found.width,
        height=found.height,
        pixels_sha256=pixels_sha256(rgb),
        hashes=image_hashes(rgb),
        alterations=alterations,
        resized_copy=encode_copy(rgb, data.eval_decode_side, data.interpolation),
    )


def inspected_or_rejected(
    job: tuple[str, InputChecks, DataConfig],
) -> Inspected | tuple[str, str]:
    """inspect, with a rejection as (reason, detail): what a worker process sends back (an exception's own
    pickling would lose the detail)."""
    path, rules, data = job
    try:
        return inspect(Path(path), rules, data)
    except Rejected as rejected:
        return rejected.reason, rejected.detail


def clean_workers(setting: int | str) -> int:
    """clean.num_workers: `auto` is every core (decoding and hashing are CPU-bound and share nothing)."""
    return (os.cpu_count() or 1) if setting == "auto" else int(setting)


PARALLEL_FROM = 2000  # files: fewer are checked in clean's own process (a worker takes seconds to start)


def inspected_in_order(
    paths: list[str], rules: InputChecks, data: DataConfig, workers: int
) -> Iterator[Inspected | tuple[str, str]]:
    """inspected_or_rejected of every path, in order: in `workers` processes (spawned, so that none
    inherits torch's threads), a chunk of files at a time, when there are two or more and at least
    PARALLEL_FROM files; else in this process. Each result is a function of its file alone, so the results
    are the same with any number of workers."""
    jobs = ((path, rules, data) for path in paths)
    if workers <= 1 or len(paths) < PARALLEL_FROM:
        yield from map(inspected_or_rejected, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, min(64, len(paths) // (4 * workers)))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(inspected_or_rejected, jobs, chunksize=chunk)


def duplicate_groups(pixel_hashes: list[str], hashes: np.ndarray, max_distance: int | None) -> list[int]:
    """Group ids (0, 1, ... in order of first member): same pixels, or near duplicates within
    `max_distance` bits (reprotune/data/duplicates.py), joined transitively (the connected components of
    the graph of both kinds of pair)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(pixel_hashes)
    if count == 0:
        return []
    first_with: dict[str, int] = {}
    same_pixels = np.array(
        [first_with.setdefault(pixels, k) for k, pixels in enumerate(pixel_hashes)], np.int64
    )
    ends = [(np.arange(count), same_pixels)]
    if max_distance is not None:
        pairs = near_pairs(hashes, max_distance)
        ends.append((pairs.first, pairs.second))
    rows, columns = (np.concatenate(side) for side in zip(*ends, strict=True))
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, columns)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    numbering: dict[int, int] = {}
    return [numbering.setdefault(c, len(numbering)) for c in component.tolist()]


def stacked_hashes(kept: pd.DataFrame) -> np.ndarray:
    """The rows' hash sets as one (rows, HASHES, WORDS) array, in row order."""
    return np.stack(kept["hashes"].tolist()) if len(kept) else np.zeros((0, HASHES, WORDS), np.uint64)


def inspect_all(
    manifest: pd.DataFrame,
    relabels: dict[str, str],
    rules: Clean,
    data: DataConfig,
    layout: Layout,
    copies: CopyPackWriter,
) -> tuple[pd.DataFrame, dict]:
    """Every ingested file checked: the kept rows (`resized` holding each copy's index in `copies`) and
    the cleaning report."""
    dropped: list[dict] = []
    altered: list[dict] = []
    relabelled: list[dict] = []
    rows: list[dict] = []
    to_inspect = [
        row.path
        for row in manifest.itertuples(index=False)
        if not row.issue and relabels.get(row.path, row.label) != DROP
    ]
    # closed on the way out, so that an error or Ctrl-C stops the workers too
    with closing(inspected_in_order(to_inspect, rules, data, clean_workers(rules.num_workers))) as results:
        for row in progress(manifest.itertuples(index=False), "clean", unit="img", total=len(manifest)):
            if row.issue:
                dropped.append({"path": row.path, "reason": row.issue, "detail": ""})
                continue
            label = relabels.get(row.path, row.label)
            if label == DROP:
                dropped.append({"path": row.path, "reason": "relabel_drop", "detail": f"{layout.relabel}"})
                continue
            found = next(results)
            if not isinstance(found, Inspected):
                reason, detail = found
                dropped.append({"path": row.path, "reason": reason, "detail": detail})
                continue
            altered += [
                {"path": row.path, "reason": note.split(":")[0], "detail": note} for note in found.alterations
            ]
            if label != row.label:
                relabelled.append({"path": row.path, "from": row.label, "to": label})
            rows.append(
                {
                    "path": row.path,
                    "label": label,
                    "given_split": row.given_split,
                    "width": found.width,
                    "height": found.height,
                    "sha256": row.sha256,
                    "pixels_sha256": found.pixels_sha256,
                    "hashes": found.hashes,
                    "resized": copies.add(found.resized_copy),
                }
            )
    kept = pd.DataFrame(rows, columns=[*KEPT_COLUMNS[:-1], "hashes"])
    kept["group"] = duplicate_groups(
        kept["pixels_sha256"].tolist(), stacked_hashes(kept), rules.near_duplicate_distance
    )
    kept, conflicts = resolve_conflicts(kept, rules.label_conflict)
    kept, small = enforce_class_size(kept, rules)
    dropped += conflicts + small
    kept = kept.assign(group=pd.factorize(kept["group"])[0])  # renumber 0.. after the drops
    require_two_classes(layout.raw, kept, dropped, "images")
    return kept, cleaning_report(manifest, kept, dropped, altered, relabelled, content="pixels_sha256")


def leakage(kept: pd.DataFrame, hashes: np.ndarray, grouping_distance: int | None) -> dict:
    """Image pairs in different splits, found by the detector clean groups with but LEAKAGE_MARGIN bits more
    sensitive, so that a copy the grouping missed shows up here instead of as 0. Pairs within the grouping
    distance can only straddle splits when given split folders put them apart; the rest are `similar`."""
    grouping = grouping_distance or 0
    checked = grouping + LEAKAGE_MARGIN
    split_of, path_of = kept["split"].to_numpy(), kept["path"].to_numpy()
    pairs = near_pairs(hashes, checked)
    apart = split_of[pairs.first] != split_of[pairs.second]
    distance, first, second = pairs.distance[apart], pairs.first[apart], pairs.second[apart]
    order = np.lexsort((second, first, distance))  # the closest first (arrays: there can be millions)
    distance, first, second = distance[order], first[order], second[order]
    near = distance <= grouping

    def examples(chosen: np.ndarray) -> list[dict]:
        return [
            {"paths": [path_of[i], path_of[j]], "splits": [split_of[i], split_of[j]], "distance": d}
            for d, i, j in zip(
                distance[chosen][:20].tolist(),
                first[chosen][:20].tolist(),
                second[chosen][:20].tolist(),
                strict=True,
            )
        ]

    return {
        "grouping_distance": grouping_distance,
        "checked_distance": checked,
        "near_duplicate_pairs_across_splits": int(near.sum()),
        "similar_pairs_across_splits": int((~near).sum()),
        "examples": examples(near),
        "similar_examples": examples(~near),
    }


class ImageCleaning:
    units, items = "files", "images"
    sample = "the built-in sample (scikit-learn digits)"
    split_column = "resized"  # split's manifest reads each image from its resized copy
    mixed_splits = "some images are in split folders and some are not; use one layout for all"

    def clean(
        self,
        manifest: pd.DataFrame,
        relabels: dict[str, str],
        rules: Clean,
        backbone: tuple[str, int | str | None],
        layout: Layout,
        staging: Path,
    ) -> tuple[pd.DataFrame, dict]:
        """Clean's whole job on images: the kept rows (written to `staging`, with their resized copies at
        `backbone` = (name, input size)'s eval side and their hashes) and the cleaning report."""
        data = data_config(*backbone)
        with CopyPackWriter(staging / layout.resized_copies.name) as copies:
            kept, report = inspect_all(manifest, relabels, rules, data, layout, copies)
            kept["resized"] = copies.finish(kept["resized"].tolist())
        save_hashes(staging / layout.duplicate_hashes.name, stacked_hashes(kept))  # row i: manifest row i
        kept[KEPT_COLUMNS].to_csv(staging / layout.clean_manifest.name, index=False)
        return kept, report

    def leakage(self, kept: pd.DataFrame, layout: Layout, grouping_distance: int | None) -> dict:
        return leakage(kept, load_hashes(layout.duplicate_hashes), grouping_distance)

    def near_duplicates(self, rules: Clean) -> str:
        return (
            "near-identical ones (resized, recompressed, cropped or framed copies: hashes within "
            f"{rules.near_duplicate_distance} bits of 256)"
        )

    def leakage_sentence(self, leakage: dict) -> str:
        return (
            f"Near-duplicate pairs across splits: {leakage['near_duplicate_pairs_across_splits']}; similar pairs "
            f"across splits (within {leakage['checked_distance']} bits, not grouped; listed in `split.json`): "
            f"{leakage['similar_pairs_across_splits']}."
        )


CLEANING = ImageCleaning()
