"""Reading an image folder: one manifest row per file, its label and given split from the folders
(`<class>/<file>` or `<split>/<class>/<file>`), or an issue code saying why it cannot be used; and the
built-in image sample (scikit-learn's digits)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from reprotune.data.files import is_hidden, list_files
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.hashing import sha256_of_file
from reprotune.pipeline.layout import Layout

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["path", "label", "given_split", "bytes", "sha256", "issue"]
# Folder names accepted as a given split, and the split each one means.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def has_split_folders(root: Path) -> bool:
    top = [p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name)]
    return bool(top) and all(name.lower() in SPLIT_FOLDERS for name in top)


def describe(path: Path, root: Path, split_layout: bool) -> dict:
    """One manifest row: label and given split from the folders, or an issue code saying why not."""
    parts = path.relative_to(root).parts
    depth = 3 if split_layout else 2
    row = {"path": path.as_posix(), "label": "", "given_split": "", "bytes": 0, "sha256": "", "issue": ""}
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        return row | {"issue": "outside_root"}
    if not path.is_file():
        return row | {"issue": "not_a_file"}
    if len(parts) != depth:
        return row | {"issue": "wrong_depth"}
    if split_layout:
        row["given_split"] = SPLIT_FOLDERS[parts[0].lower()]
    return row | {"label": parts[-2], "bytes": path.stat().st_size, "sha256": sha256_of_file(path)}


def scan(root: Path) -> pd.DataFrame:
    split_layout = has_split_folders(root)
    rows = [describe(path, root, split_layout) for path in list_files(root)]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def write_sample(folder: Path, side: int) -> None:
    """scikit-learn's 8x8 digits as <digit>/<index>.png, upscaled so that they look like a photo folder."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L")
        target = folder / str(label) / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        grey.resize((side, side), Image.Resampling.BICUBIC).save(target, optimize=False)


class ImageFiles:
    modality, units = "image", "files"

    def claims(self, root: Path, files: list[Path]) -> list[Path]:
        """The files that can only be images: those in a folder under `root` (class or split folders)."""
        return [f for f in files if f.parent != root]

    def named(self, root: Path, claimed: list[Path]) -> str:
        return f"image folders ({claimed[0].relative_to(root).parts[0]}/, ...)"

    def scan(self, root: Path, files: list[Path]) -> pd.DataFrame:
        manifest = scan(root)
        misplaced = manifest.loc[manifest["issue"] == "wrong_depth", "path"].tolist()
        if misplaced:
            layout = "<split>/<class>/<image>" if has_split_folders(root) else "<class>/<image>"
            hint = (
                f"put each image in a folder named after its class, {root}/{layout} "
                f"(e.g. {root}/cat/001.jpg; the folder name is the label)"
            )
            if len(misplaced) == len(manifest):
                raise InputError(f"{root}: none of its {len(manifest)} files is at {layout}: {hint}")
            log.warning(
                "%d file(s) are not at %s and are left out (e.g. %s): %s",
                len(misplaced),
                layout,
                misplaced[0],
                hint,
            )
        return manifest

    def sample(self, layout: Layout, staging: Path, image_side: int) -> pd.DataFrame:
        log.warning(
            "%s holds no files: training the built-in sample (scikit-learn digits) instead. To train on your "
            "images, put them in %s/<class>/<image> and run `dvc repro` again",
            layout.raw,
            layout.raw,
        )
        staged = staging / layout.sample.name
        write_sample(staged, image_side)
        # Scan the staged copy, then name rows by where they will live once the folder is in place.
        manifest = scan(staged)
        manifest["path"] = [
            (layout.sample / Path(p).relative_to(staged)).as_posix() for p in manifest["path"]
        ]
        return manifest


FILES = ImageFiles()
