"""Images from folders beside `data/raw` (distill's unlabelled images, adapt's target images): each passes
clean's checks, and none may show the same picture as an image the pipeline already uses.

A file is dropped, with its reason, when clean's checks refuse it, when it is an exact copy (file sha256 or
decoded pixels) of a known image or of an earlier file of the folder, or when it is a near duplicate (hashes
within `clean.near_duplicate_distance` bits, reprotune/data/duplicates.py) of a known image. The known images are
clean's kept images (`Known.from_clean`), plus whatever a stage adds (adapt's labelled target test images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reprotune.data.checks import CHECK_SIDE, Rejected, decode_checked, pixels_sha256
from reprotune.data.dataconfig import data_config
from reprotune.data.duplicates import HASHES, WORDS, image_hashes, load_hashes, near_pairs
from reprotune.pipeline.hashing import sha256_of_file
from reprotune.pipeline.input_checks import input_checks
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.progress import progress


@dataclass
class Known:
    """Images a new file must not repeat, each with the word a report uses for where it is from
    (`labelled`, `source`, `target_test`)."""

    paths: list[str]
    owners: list[str]  # per path: where it is from
    files: dict[str, str]  # sha256 of the file -> owner
    pixels: dict[str, str]  # sha256 of the decoded pixels -> owner
    hashes: np.ndarray = field(default_factory=lambda: np.zeros((0, HASHES, WORDS), np.uint64))

    @classmethod
    def from_clean(cls, layout: Layout, name: str) -> Known:
        """clean's kept images: row i of its manifest has row i of its hash file."""
        kept = layout.read_manifest(layout.clean_manifest)
        return cls(
            kept["path"].tolist(),
            [name] * len(kept),
            dict.fromkeys(kept["sha256"], name),
            dict.fromkeys(kept["pixels_sha256"], name),
            load_hashes(layout.duplicate_hashes),
        )

    def plus(self, checked: Checked, name: str) -> Known:
        """These images and `checked`'s kept ones, which are from `name`."""
        return Known(
            self.paths + checked.kept["path"].tolist(),
            self.owners + [name] * len(checked.kept),
            self.files | dict.fromkeys(checked.kept["sha256"], name),
            self.pixels | dict.fromkeys(checked.pixels, name),
            np.concatenate([self.hashes, checked.hashes]),
        )


@dataclass
class Checked:
    kept: pd.DataFrame  # path, sha256 (and whatever columns the caller's rows had)
    pixels: list[str]
    hashes: np.ndarray
    dropped: list[dict]  # path, reason, detail


def check_side(params: Params) -> int:
    """The side clean decodes at, so that pixel digests compare with clean's."""
    return max(CHECK_SIDE, data_config(params.backbone.name, params.backbone.input_size).eval_decode_side)


def check_images(rows: pd.DataFrame, root: Path, params: Params, known: Known, desc: str) -> Checked:
    """`rows` (a `path` column, files under `root`, and any other columns) checked as the module says."""
    rules = input_checks(params)
    side = check_side(params)
    kept, pixels, hashes, dropped = [], [], [], []
    files, seen_pixels = set(known.files), set(known.pixels)
    for row in progress(rows.to_dict("records"), desc, unit="img"):
        path = Path(row["path"])
        if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
            dropped.append({"path": row["path"], "reason": "outside_root", "detail": ""})
            continue
        digest = sha256_of_file(path)
        try:
            found = decode_checked(path, rules, side)
        except Rejected as rejected:
            dropped.append({"path": row["path"], "reason": rejected.reason, "detail": rejected.detail})
            continue
        picture = pixels_sha256(found.rgb)
        if digest in known.files or picture in known.pixels:
            owner = known.files.get(digest) or known.pixels[picture]
            dropped.append({"path": row["path"], "reason": f"duplicate_of_{owner}", "detail": "same content"})
            continue
        if digest in files or picture in seen_pixels:
            dropped.append({"path": row["path"], "reason": "duplicate_in_folder", "detail": "same content"})
            continue
        files.add(digest)
        seen_pixels.add(picture)
        kept.append(row | {"sha256": digest})
        pixels.append(picture)
        hashes.append(image_hashes(found.rgb))
    frame = pd.DataFrame(kept, columns=[*rows.columns, "sha256"])
    stacked = np.stack(hashes) if hashes else np.zeros((0, HASHES, WORDS), np.uint64)
    distance = params.clean.near_duplicate_distance
    if distance is not None and len(frame) and len(known.hashes):
        count = len(known.hashes)
        near: dict[int, tuple[int, int]] = {}
        pairs = near_pairs(np.concatenate([known.hashes, stacked]), distance)
        for i, j, bits in zip(
            pairs.first.tolist(), pairs.second.tolist(), pairs.distance.tolist(), strict=True
        ):
            if i < count <= j:
                near.setdefault(j - count, (i, bits))
        for index, (i, bits) in sorted(near.items()):
            dropped.append(
                {
                    "path": frame["path"].iloc[index],
                    "reason": f"near_duplicate_of_{known.owners[i]}",
                    "detail": f"{known.paths[i]} ({bits} bits)",
                }
            )
        keep = [i for i in range(len(frame)) if i not in near]
        frame = frame.iloc[keep].reset_index(drop=True)
        pixels = [pixels[i] for i in keep]
        stacked = stacked[keep]
    return Checked(frame, pixels, stacked, dropped)
