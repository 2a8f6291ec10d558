"""The steps of cleaning that hold for every modality: a duplicate group under two labels, classes too small
to split, the two-class minimum, and the report that accounts for every scanned row once. Each modality's
cleaning (reprotune/modalities/*/cleaning.py) runs its own checks and then these."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Clean

DROP = "drop"  # the relabel file's label for "leave this row out"


def resolve_conflicts(kept: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, list[dict]]:
    """A group under two or more labels: `drop` it whole, or keep its `majority` label (a tie drops it)."""
    dropped = []
    keep = pd.Series(True, index=kept.index)
    for group, members in kept.groupby("group"):
        votes = Counter(members["label"])
        if len(votes) < 2:
            continue
        ranked = votes.most_common()
        winner = ranked[0][0] if policy == "majority" and ranked[0][1] > ranked[1][1] else None
        detail = f"group {group} has labels {dict(sorted(votes.items()))}; clean.label_conflict={policy}"
        for index, row in members.iterrows():
            if row["label"] != winner:
                keep[index] = False
                dropped.append({"path": row["path"], "reason": "label_conflict", "detail": detail})
    return kept[keep], dropped


def enforce_class_size(kept: pd.DataFrame, rules: Clean) -> tuple[pd.DataFrame, list[dict]]:
    counts = kept["label"].value_counts()
    small = sorted(counts[counts < rules.min_class_size].index)
    if small and rules.small_class == "fail":
        raise InputError(
            f"classes with fewer than clean.min_class_size={rules.min_class_size} images: "
            + ", ".join(f"{c} ({counts[c]})" for c in small)
            + "; add images, or set clean.small_class: drop"
        )
    too_small = kept["label"].isin(small)
    dropped = [
        {"path": p, "reason": "class_too_small", "detail": f"{label}: {counts[label]} < clean.min_class_size"}
        for p, label in kept.loc[too_small, ["path", "label"]].itertuples(index=False)
    ]
    return kept[~too_small], dropped


def require_two_classes(raw: Path, kept: pd.DataFrame, dropped: list[dict], what: str) -> None:
    classes = sorted(kept["label"].unique())
    if len(classes) < 2:
        raise InputError(
            f"{raw}: {len(kept)} usable {what} in {len(classes)} class(es) after cleaning; at least 2 "
            f"classes are needed ({len(dropped)} dropped; reasons: {dict(Counter(d['reason'] for d in dropped))})"
        )


def cleaning_report(
    manifest: pd.DataFrame,
    kept: pd.DataFrame,
    dropped: list[dict],
    altered: list[dict],
    relabelled: list[dict],
    content: str,
) -> dict:
    """`content` is the column equal between exact copies (decoded pixels; a text's sha256)."""
    groups = [members for _, members in kept.groupby("group") if len(members) > 1]
    report = {
        "scanned": len(manifest),
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(Counter(d["reason"] for d in dropped).items())),
        "altered_by_reason": dict(sorted(Counter(a["reason"] for a in altered).items())),
        "classes_before": dict(sorted(Counter(manifest.loc[manifest["label"] != "", "label"]).items())),
        "classes_after": dict(sorted(Counter(kept["label"]).items())),
        "duplicate_groups": [
            {
                "kind": "exact" if members[content].nunique() == 1 else "near",
                "paths": sorted(members["path"]),
            }
            for members in groups
        ],
        "dropped_files": sorted(dropped, key=lambda d: d["path"]),
        "altered_files": sorted(altered, key=lambda a: (a["path"], a["reason"])),
    }
    if relabelled:  # only then: an empty relabel file leaves this report's bytes as they were
        report["relabelled_files"] = sorted(relabelled, key=lambda r: r["path"])
    if report["kept"] + report["dropped"] != report["scanned"]:
        raise AssertionError("every scanned file is either kept or dropped, once")
    return report
