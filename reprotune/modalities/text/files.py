"""Reading texts: one manifest row per record of every CSV or JSON Lines file directly in the data folder
(reprotune/data/texts.py reads them), any other file one unusable row; and the built-in text sample
(Banking77, `paths.text_sample`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from reprotune.data.files import list_files
from reprotune.data.texts import is_text_file, read_text_file, text_sha256
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["path", "label", "given_split", "bytes", "sha256", "issue", "text", "detail"]


def scan(root: Path, files: list[Path]) -> pd.DataFrame:
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
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame = frame.fillna({"label": "", "given_split": "", "bytes": 0, "sha256": "", "text": ""})
    return frame.astype({"bytes": int})


def write_sample(source: Path, folder: Path) -> None:
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


class TextFiles:
    modality, units = "text", "rows"

    def claims(self, root: Path, files: list[Path]) -> list[Path]:
        """The files that can only be texts: CSV and JSON Lines files directly in `root`."""
        return [f for f in files if is_text_file(f) and f.parent == root]

    def named(self, root: Path, claimed: list[Path]) -> str:
        return f"text data files ({claimed[0].name}, ...)"

    def scan(self, root: Path, files: list[Path]) -> pd.DataFrame:
        return scan(root, files)

    def sample(self, layout: Layout, staging: Path, image_side: int) -> pd.DataFrame:
        log.warning(
            "%s holds no files: training the built-in text sample (%s) instead. To train on your texts, put "
            "CSV or JSON Lines files with text and label columns directly in %s and run `dvc repro` again",
            layout.raw,
            layout.text_sample,
            layout.raw,
        )
        staged = staging / layout.text_sample_copy.name
        write_sample(layout.text_sample, staged)
        manifest = scan(staged, list_files(staged))
        # Name rows by where the copy will live once the folder is in place.
        manifest["path"] = [
            (layout.text_sample_copy / Path(p).relative_to(staged)).as_posix() for p in manifest["path"]
        ]
        return manifest


FILES = TextFiles()
