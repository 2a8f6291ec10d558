"""ingest: list every source image, or every labelled text, in a manifest (path, label, given split, bytes,
sha256).

The source is `paths.raw`: images laid out as <class>/<image> or <split>/<class>/<image>, or texts in CSV or
JSON Lines files directly inside it (reprotune/texts.py). Which of the two it holds is the modality
(`ingest.modality: auto` finds it; holding both is an error). It is decided here, once, and recorded with
whether the data are a built-in sample (data_kind.json, reprotune/data_kind.py): every later stage reads
that record, and params.yaml's `auto`s are resolved from it (reprotune/resolve.py). When the folder holds no files, a built-in sample is used instead,
copied under `paths.ingested`, never into the raw folder: scikit-learn's digits upscaled to PNG photos, or
with `ingest.modality: text` Banking77 (`paths.text_sample`). Files and rows this stage cannot use get an
`issue` code; the clean stage reports them with everything else it drops.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from reprotune import data_kind, stage
from reprotune.atomic_io import atomic_output
from reprotune.data_kind import IMAGE, TEXT, DataKind
from reprotune.errors import InputError
from reprotune.files import is_hidden, list_files
from reprotune.hashing import sha256_of_file
from reprotune.layout import Layout
from reprotune.params import Params
from reprotune.resolve import resolve
from reprotune.texts import is_text_file, read_text_file, text_sha256

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["path", "label", "given_split", "bytes", "sha256", "issue"]
TEXT_MANIFEST_COLUMNS = [*MANIFEST_COLUMNS, "text", "detail"]
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


def modality(root: Path, files: list[Path], setting: str) -> str:
    """`image` or `text`: as set, or (auto) from what the folder holds."""
    if setting != "auto":
        return setting
    texts = [f for f in files if is_text_file(f) and f.parent == root]
    foldered = [f for f in files if f.parent != root]
    if texts and foldered:
        raise InputError(
            f"{root}: holds both text data files ({texts[0].name}, ...) and image folders "
            f"({foldered[0].relative_to(root).parts[0]}/, ...); keep one modality in it, or set "
            "ingest.modality to image or text (the files of the other kind are then reported as unusable)"
        )
    return "text" if texts else "image"


def scan_texts(root: Path, files: list[Path]) -> pd.DataFrame:
    """One row per record of every text data file directly in `root`; any other file is one unusable row."""
    rows = []
    for path in files:
        if not (is_text_file(path) and path.parent == root and path.is_file()):
            issue = "not_a_text_file" if path.parent == root else "wrong_depth"
            rows.append(
                {
                    "path": path.as_posix(),
                    "issue": issue,
                    "detail": "text data files are CSV or JSON Lines files directly inside the data folder",
                }
            )
            continue
        for row in read_text_file(path):
            given = row.pop("split")
            encoded = row["text"].encode("utf-8") if not row["issue"] else b""
            rows.append(
                row
                | {
                    "given_split": given,
                    "bytes": len(encoded),
                    "sha256": text_sha256(row["text"]) if not row["issue"] else "",
                }
            )
    frame = pd.DataFrame(rows, columns=TEXT_MANIFEST_COLUMNS)
    frame = frame.fillna({"label": "", "given_split": "", "bytes": 0, "sha256": "", "text": ""})
    return frame.astype({"bytes": int})


def write_text_sample(source: Path, folder: Path) -> None:
    """The text sample's data files, copied as they are (its LICENSE stays beside the original)."""
    if not source.is_dir() or not any(is_text_file(f) for f in source.iterdir()):
        raise InputError(
            f"params.yaml: paths.text_sample: {source} holds no CSV or JSONL file; it ships with the "
            "project (data/samples/banking77): restore it from git"
        )
    folder.mkdir()
    for path in sorted(source.iterdir()):
        if path.is_file() and is_text_file(path):
            (folder / path.name).write_bytes(path.read_bytes())


def ingest(params: Params) -> None:
    layout = Layout(params.paths)
    if not layout.raw.is_dir():
        raise InputError(f"{layout.raw}: folder not found; create it (it may stay empty for the sample)")
    files = list_files(layout.raw)
    found = modality(layout.raw, files, params.ingest.modality) if files else params.ingest.modality
    kind = DataKind(TEXT if found == TEXT else IMAGE, sample=not files)
    resolve(params, kind)  # refuses, before anything is written, a key that cannot apply to these data
    with atomic_output(layout.ingested) as staging:
        staging.mkdir()
        data_kind.write(staging / layout.data_kind.name, kind)
        if files and kind.modality == TEXT:
            manifest = scan_texts(layout.raw, files)
            log.info("read %d rows (text) from %s", len(manifest), layout.raw)
        elif kind.modality == TEXT:
            log.info("%s holds no files: using the built-in text sample (%s)", layout.raw, layout.text_sample)
            staged = staging / layout.text_sample_copy.name
            write_text_sample(layout.text_sample, staged)
            manifest = scan_texts(staged, list_files(staged))
            # Name rows by where the copy will live once the folder is in place.
            manifest["path"] = [
                (layout.text_sample_copy / Path(p).relative_to(staged)).as_posix() for p in manifest["path"]
            ]
        elif files:
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
    log.info(
        "manifest: %d %s, %d classes",
        len(manifest),
        "rows" if "text" in manifest.columns else "files",
        manifest["label"].replace("", pd.NA).nunique(),
    )


def main() -> None:
    stage.run(ingest, resolved=False)


if __name__ == "__main__":
    main()
