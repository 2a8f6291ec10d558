"""Cleaning texts: rows ingest could not read (undecodable bytes, malformed rows, with file and line), no
label, empty or whitespace-only text, text over `clean.max_text_length` characters (cut to it, an altered
row, or dropped, by `clean.long_text`). Texts equal after normalisation (case, whitespace, punctuation:
reprotune/data/texts.py) form one duplicate group, kept in one split; the same text under two labels follows
`clean.label_conflict`, and of exact copies under one label the first is kept and the others dropped (a
repeated row adds weight, not information). And, for split, the leakage check on those groups."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reprotune.data.cleaning_steps import (
    DROP,
    cleaning_report,
    enforce_class_size,
    require_two_classes,
    resolve_conflicts,
)
from reprotune.data.texts import normalised, text_sha256
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Clean, InputChecks

KEPT_COLUMNS = ["path", "label", "given_split", "sha256", "text", "group"]


def check_text(text: str, rules: InputChecks) -> tuple[str | None, dict | None]:
    """The text as kept (None: dropped) and the reason it was dropped or altered, if it was."""
    if not text.strip():
        return None, {"reason": "empty_text", "detail": "empty or whitespace only"}
    if len(text) > rules.max_text_length:
        detail = f"{len(text)} characters > clean.max_text_length={rules.max_text_length}"
        if rules.long_text == "drop":
            return None, {"reason": "too_long", "detail": detail + "; clean.long_text=drop"}
        return text[: rules.max_text_length], {"reason": "truncated", "detail": detail + "; cut to it"}
    return text, None


def drop_exact_copies(kept: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Of rows with the same text and label, the first stays; the others are dropped, naming it."""
    first = kept.groupby(["sha256", "label"], sort=False)["path"].transform("first")
    copies = first != kept["path"]
    dropped = [
        {"path": path, "reason": "duplicate", "detail": f"the same text and label as {original}"}
        for path, original in zip(kept.loc[copies, "path"], first[copies], strict=True)
    ]
    return kept[~copies], dropped


def clean_texts(
    manifest: pd.DataFrame, relabels: dict[str, str], rules: Clean, layout: Layout
) -> tuple[pd.DataFrame, dict]:
    dropped: list[dict] = []
    altered: list[dict] = []
    relabelled: list[dict] = []
    rows: list[dict] = []
    for row in manifest.itertuples(index=False):
        if row.issue:
            dropped.append({"path": row.path, "reason": row.issue, "detail": row.detail})
            continue
        label = relabels.get(row.path, row.label)
        if label == DROP:
            dropped.append({"path": row.path, "reason": "relabel_drop", "detail": f"{layout.relabel}"})
            continue
        if not label:
            dropped.append({"path": row.path, "reason": "missing_label", "detail": "the label is empty"})
            continue
        text, note = check_text(row.text, rules)
        if note:
            (dropped if text is None else altered).append({"path": row.path, **note})
        if text is None:
            continue
        if label != row.label:
            relabelled.append({"path": row.path, "from": row.label, "to": label})
        rows.append(
            {
                "path": row.path,
                "label": label,
                "given_split": row.given_split,
                "sha256": row.sha256 if text == row.text else text_sha256(text),
                "text": text,
                "group": normalised(text),
            }
        )
    kept = pd.DataFrame(rows, columns=KEPT_COLUMNS)
    kept["group"] = pd.factorize(kept["group"])[0]
    kept, conflicts = resolve_conflicts(kept, rules.label_conflict)
    kept, copies = drop_exact_copies(kept)
    kept, small = enforce_class_size(kept, rules)
    dropped += conflicts + copies + small
    kept = kept.assign(group=pd.factorize(kept["group"])[0])
    require_two_classes(layout.raw, kept, dropped, "texts")
    return kept, cleaning_report(manifest, kept, dropped, altered, relabelled, content="sha256")


def leakage(kept: pd.DataFrame) -> dict:
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


class TextCleaning:
    units, items = "rows", "texts"
    sample = "the built-in text sample (Banking77)"
    split_column = "text"  # split's manifest carries each text, so later stages read it from there
    mixed_splits = (
        "some rows come from split files (train, val, test) or a split column and some do not; give every "
        "row a split, or none"
    )

    def clean(
        self,
        manifest: pd.DataFrame,
        relabels: dict[str, str],
        rules: Clean,
        backbone: tuple[str, int | str | None],
        layout: Layout,
        staging: Path,
    ) -> tuple[pd.DataFrame, dict]:
        """Clean's whole job on texts (`backbone` does not shape a text's cleaning)."""
        kept, report = clean_texts(manifest, relabels, rules, layout)
        kept[KEPT_COLUMNS].to_csv(staging / layout.clean_manifest.name, index=False)
        return kept, report

    def leakage(self, kept: pd.DataFrame, layout: Layout, grouping_distance: int | None) -> dict:
        return leakage(kept)

    def near_duplicates(self, rules: Clean) -> str:
        return (
            "texts equal after normalising case, whitespace and punctuation (of exact copies under one label "
            "only the first is kept)"
        )

    def leakage_sentence(self, leakage: dict) -> str:
        return (
            f"Duplicate pairs across splits: {leakage['near_duplicate_pairs_across_splits']} (listed in "
            "`split.json`)."
        )


CLEANING = TextCleaning()
