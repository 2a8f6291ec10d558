"""ingest: list every source image in a manifest (path, label, given split, bytes, sha256).

The source is `paths.raw` laid out as <class>/<image> or <split>/<class>/<image>. When it holds no files,
the built-in sample (scikit-learn's digits, upscaled to PNG photos) is written under `paths.ingested`
instead, never into the raw folder. Files this stage cannot use get an `issue` code; the clean stage
reports them with everything else it drops.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from reprotune import stage
from reprotune.errors import InputError
from reprotune.files import is_hidden, list_files
from reprotune.layout import Layout, atomic_output, sha256_of_file
from reprotune.params import Params

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


def ingest(params: Params) -> None:
    layout = Layout(params.paths)
    if not layout.raw.is_dir():
        raise InputError(f"{layout.raw}: folder not found; create it (it may stay empty for the sample)")
    with atomic_output(layout.ingested) as staging:
        staging.mkdir()
        if list_files(layout.raw):
            manifest = scan(layout.raw)
            log.info("scanned %d files under %s", len(manifest), layout.raw)
        else:
            log.info("%s holds no images: using the built-in sample (scikit-learn digits)", layout.raw)
            write_sample(staging / layout.sample.name, params.ingest.sample_image_size)
            # Scan the staged copy, then name rows by where they will live once the folder is in place.
            manifest = scan(staging / layout.sample.name)
            manifest["path"] = [
                (layout.sample / Path(p).relative_to(staging / layout.sample.name)).as_posix()
                for p in manifest["path"]
            ]
        manifest.to_csv(staging / layout.ingest_manifest.name, index=False)
    log.info("manifest: %d files, %d classes", len(manifest), manifest["label"].replace("", pd.NA).nunique())


def main() -> None:
    stage.run(ingest)


if __name__ == "__main__":
    main()
