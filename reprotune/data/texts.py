"""Labelled texts: which files of a folder hold them, how their rows are read, and the rules that compare texts.

A text data file is a CSV (comma, semicolon or tab separated; .csv or .tsv) or JSON Lines file directly
inside the data folder, with a `text` and a `label` column (names matched without case or surrounding
spaces) and optionally a `split` column. A file named train, val/valid/validation or test (any case, e.g.
`Train.csv`) gives all its rows that split, as a split folder does for images; a `split` column gives it
per row and wins over the name.

Each row's id is `<file>:<line>` (the line its record starts on), the `path` every later table uses for it,
so that relabel.csv, label_issues.csv and predictions.csv name rows the way an editor finds them. Bytes that
are not UTF-8 cost only the rows they sit in, reported with file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from pathlib import Path

from reprotune.pipeline.errors import InputError

CSV_SUFFIXES = (".csv", ".tsv")
TEXT_SUFFIXES = (*CSV_SUFFIXES, ".jsonl", ".ndjson")
# A CSV file's delimiter is the first of these that splits its header into the columns needed: comma, then
# the semicolon that spreadsheets write where the comma is the decimal mark, then tab (.tsv).
DELIMITERS = (",", ";", "\t")
# File names (and `split` values) accepted as a given split, and the split each one means; as image folders.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
TEXT_COLUMN, LABEL_COLUMN, SPLIT_COLUMN = "text", "label", "split"
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape turns a non-UTF-8 byte into


def is_text_file(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


APOSTROPHES = "'\u2019\u02bc`\u00b4"


def normalised(text: str) -> str:
    """The form two texts that differ only in case, whitespace or punctuation share: NFKC, case-folded,
    apostrophes removed (`where's` = `wheres`), other punctuation and symbols read as spaces (`top-up` =
    `top up`), whitespace runs collapsed to one space."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(
        "" if c in APOSTROPHES else " " if unicodedata.category(c)[0] in "PSZ" else c for c in folded
    )
    return " ".join(kept.split())


def _row(path: Path, line: int, text: str, label: str, split: str, issue: str = "", detail: str = "") -> dict:
    return {
        "path": f"{path.as_posix()}:{line}",
        "text": text,
        "label": label,
        "split": split,
        "issue": issue,
        "detail": detail,
    }


def _check_row(path: Path, line: int, values: dict[str, str], name_split: str) -> dict:
    """One record's row: undecodable bytes and an unknown split value are issues; the rest is clean's job."""
    if any(_UNDECODABLE.search(value) for value in values.values()):
        return _row(path, line, "", "", "", "undecodable", f"{path} line {line}: bytes that are not UTF-8")
    split = name_split
    if SPLIT_COLUMN in values and values[SPLIT_COLUMN].strip():
        given = values[SPLIT_COLUMN].strip().lower()
        if given not in SPLIT_NAMES:
            return _row(
                path,
                line,
                "",
                "",
                "",
                "unknown_split",
                f"{path} line {line}: split {values[SPLIT_COLUMN]!r} is not one of {', '.join(SPLIT_NAMES)}",
            )
        split = SPLIT_NAMES[given]
    return _row(path, line, values[TEXT_COLUMN], values[LABEL_COLUMN].strip(), split)


def _columns(path: Path, names: list[str]) -> dict[str, int]:
    """Column positions by their normalised name; the text and label columns must be there, once."""
    found: dict[str, int] = {}
    for position, name in enumerate(names):
        key = str(name).strip().lower()
        if key in found and key in (TEXT_COLUMN, LABEL_COLUMN, SPLIT_COLUMN):
            raise InputError(f"{path}: column {key!r} appears twice")
        found.setdefault(key, position)
    missing = [c for c in (TEXT_COLUMN, LABEL_COLUMN) if c not in found]
    if missing:
        raise InputError(
            f"{path}: no {' or '.join(repr(m) for m in missing)} column (found {', '.join(map(repr, names))}); "
            f"a text data file needs a {TEXT_COLUMN!r} and a {LABEL_COLUMN!r} column, optionally {SPLIT_COLUMN!r}"
        )
    return found


def _decoded(path: Path) -> str:
    # Undecodable bytes survive as lone surrogates, so that each costs only its own row (see _check_row).
    return path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _csv_reader(content: str, needed: tuple[str, ...]):
    """A csv reader of `content` with the delimiter its header uses (see DELIMITERS); comma when none gives
    the `needed` columns, so that the error names the header as found."""
    header = content.split("\n", 1)[0]
    for delimiter in DELIMITERS:
        names = {name.strip().lower() for name in next(csv.reader([header], delimiter=delimiter), [])}
        if all(name in names for name in needed):
            return csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    return csv.reader(io.StringIO(content, newline=""))


def read_csv_rows(path: Path, name_split: str) -> list[dict]:
    reader = _csv_reader(_decoded(path), (TEXT_COLUMN, LABEL_COLUMN))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as error:
        raise InputError(f"{path}: not a CSV file ({error})") from None
    if any(_UNDECODABLE.search(name) for name in header):
        raise InputError(f"{path} line 1: the header has bytes that are not UTF-8; save the file as UTF-8")
    columns = _columns(path, header)
    rows, start = [], reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            rows.append(_row(path, start, "", "", "", "malformed_row", f"{path} line {start}: {error}"))
            break  # the csv module cannot find the next record after this
        if record and len(record) != len(header):
            rows.append(
                _row(
                    path,
                    start,
                    "",
                    "",
                    "",
                    "malformed_row",
                    f"{path} line {start}: {len(record)} fields, the header has {len(header)}",
                )
            )
        elif record:  # a blank line is no record
            values = {key: record[position] for key, position in columns.items()}
            rows.append(_check_row(path, start, values, name_split))
        start = reader.line_num + 1
    return rows


def read_jsonl_rows(path: Path, name_split: str) -> list[dict]:
    rows = []
    for line, raw in enumerate(_decoded(path).splitlines(), start=1):
        if not raw.strip():
            continue
        if _UNDECODABLE.search(raw):
            rows.append(
                _row(path, line, "", "", "", "undecodable", f"{path} line {line}: bytes that are not UTF-8")
            )
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            rows.append(
                _row(path, line, "", "", "", "malformed_row", f"{path} line {line}: not JSON ({error})")
            )
            continue
        if not isinstance(record, dict):
            rows.append(
                _row(path, line, "", "", "", "malformed_row", f"{path} line {line}: not a JSON object")
            )
            continue
        keys = {str(k).strip().lower(): k for k in record}
        if TEXT_COLUMN not in keys or LABEL_COLUMN not in keys:
            rows.append(
                _row(
                    path,
                    line,
                    "",
                    "",
                    "",
                    "malformed_row",
                    f"{path} line {line}: needs the keys {TEXT_COLUMN!r} and {LABEL_COLUMN!r}",
                )
            )
            continue
        values = {
            k: "" if record[keys[k]] is None else str(record[keys[k]])
            for k in (TEXT_COLUMN, LABEL_COLUMN, SPLIT_COLUMN)
            if k in keys
        }
        rows.append(_check_row(path, line, values, name_split))
    return rows


def read_text_file(path: Path) -> list[dict]:
    """Every record of one text data file as a row (path id, text, label, split, issue, detail)."""
    name_split = SPLIT_NAMES.get(path.stem.lower(), "")
    if path.suffix.lower() in CSV_SUFFIXES:
        return read_csv_rows(path, name_split)
    return read_jsonl_rows(path, name_split)


def read_unlabelled(path: Path) -> list[tuple[str, str, str]]:
    """(row id, text, reason) for every text of a file to label: a CSV or JSON Lines file's `text` column
    (any other column, a label included, is ignored), or any other file's non-empty lines, one text each. A
    row that cannot be read gets its reason instead of a text."""
    if is_text_file(path):
        rows = []
        if path.suffix.lower() in CSV_SUFFIXES:
            reader = _csv_reader(_decoded(path), (TEXT_COLUMN,))
            header = next(reader, None)
            if header is None:
                return []
            names = [str(n).strip().lower() for n in header]
            if TEXT_COLUMN not in names:
                raise InputError(f"{path}: no {TEXT_COLUMN!r} column (found {', '.join(map(repr, header))})")
            column, start = names.index(TEXT_COLUMN), reader.line_num + 1
            for record in reader:
                if record:
                    value = record[column] if column < len(record) else ""
                    rows.append((f"{path}:{start}", _readable(value), _text_reason(value)))
                start = reader.line_num + 1
            return rows
        for line, raw in enumerate(_decoded(path).splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                value = str(next(v for k, v in record.items() if str(k).strip().lower() == TEXT_COLUMN))
            except (json.JSONDecodeError, AttributeError, StopIteration):
                rows.append((f"{path}:{line}", "", f"not a JSON object with a {TEXT_COLUMN!r} key"))
                continue
            rows.append((f"{path}:{line}", _readable(value), _text_reason(value)))
        return rows
    return [
        (f"{path}:{line}", _readable(raw), _text_reason(raw))
        for line, raw in enumerate(_decoded(path).splitlines(), start=1)
        if raw.strip()
    ]


def _readable(text: str) -> str:
    """The text with any byte that is not UTF-8 shown as U+FFFD, so that it can be written out."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _text_reason(text: str) -> str:
    if _UNDECODABLE.search(text):
        return "bytes that are not UTF-8"
    return "" if text.strip() else "empty text"
