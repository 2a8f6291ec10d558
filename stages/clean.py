"""clean: decode every image and keep only those the later stages can trust.

Each kept image larger than the backbone's eval side is also stored resized to it, once, in
`resized.safetensors` (reprotune/resized.py): every later pass reads that small copy instead of the file.

Each dropped file gets one row in `reports/cleaning.json` (path, reason, detail); so does each kept file
that was altered on the way to RGB (mode conversion, EXIF orientation). Identical images (same decoded
pixels) and near-identical ones (hash sets within `clean.near_duplicate_distance` bits of 256: resized,
recompressed, re-encoded, slightly cropped or framed copies; reprotune/duplicates.py) form one
duplicate group, which the split stage keeps inside one split. `kept + dropped = scanned` always holds.

Label fixes come from `paths.relabel` (data/relabel.csv, yours to edit: `path,label` rows, label a class or
`drop`), applied before duplicates and conflicts are resolved, and listed in the report; the image files
themselves are never touched. With no rows in it, nothing in the outputs mentions it.

Texts (the manifest has a `text` column) pass their own rules, in `clean_texts`: rows ingest could not read
(undecodable bytes, malformed rows, with file and line), no label, empty or whitespace-only text, text over
`clean.max_text_length` characters (cut to it, an altered row, or dropped, by `clean.long_text`). Texts
equal after normalisation (case, whitespace, punctuation: reprotune/texts.py) form one duplicate group, kept
in one split; the same text under two labels follows `clean.label_conflict`, and of exact copies under one
label the first is kept and the others dropped (a repeated row adds weight, not information).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm import tqdm

from reprotune import stage
from reprotune.atomic_io import atomic_output, write_json, write_text
from reprotune.checks import CHECK_SIDE, Rejected, decode_checked, pixels_sha256
from reprotune.dataconfig import DataConfig, data_config
from reprotune.duplicates import HASHES, WORDS, image_hashes, near_pairs, save_hashes
from reprotune.errors import InputError
from reprotune.figures import save
from reprotune.layout import Layout
from reprotune.params import Clean, Params
from reprotune.resized import CopyPackWriter, encode_copy
from reprotune.texts import normalised, text_sha256

log = logging.getLogger(__name__)

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


TEXT_KEPT_COLUMNS = ["path", "label", "given_split", "sha256", "text", "group"]

RELABEL_COLUMNS = ["path", "label"]
DROP = "drop"


def read_relabels(path: Path, manifest: pd.DataFrame) -> dict[str, str]:
    """path -> new label (or `drop`) from the user's relabel file; every row checked before any work."""
    if not path.is_file():
        return {}
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" export starts with a byte-order mark
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        frame.columns = [str(name).strip() for name in frame.columns]
    except pd.errors.EmptyDataError:
        return {}
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a CSV file with the columns path,label ({error})") from None
    if list(frame.columns) != RELABEL_COLUMNS:
        raise InputError(f"{path}: the columns must be exactly path,label (got {','.join(frame.columns)})")
    frame = frame.apply(lambda column: column.str.strip())
    known = set(manifest["path"])
    classes = sorted(set(manifest["label"]) - {""})
    problems = []
    for line, (image, label) in enumerate(frame.itertuples(index=False), start=2):
        if image not in known:
            problems.append(
                f"{path} line {line}: {image!r} is not one of the {len(known)} ingested images or text rows; "
                "write it as reports/label_issues.csv and data/ingested/manifest.csv give it"
            )
        elif label != DROP and label not in classes:
            shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
            problems.append(f"{path} line {line}: label {label!r} is neither a class ({shown}) nor `{DROP}`")
    for image in sorted(set(frame.loc[frame["path"].duplicated(), "path"])):
        problems.append(f"{path}: {image!r} is listed more than once; keep one row per image")
    if problems:
        raise InputError(
            "\n".join(problems[:20]) + (f"\n... {len(problems) - 20} more" if len(problems) > 20 else "")
        )
    return dict(zip(frame["path"], frame["label"], strict=True))


@dataclass(frozen=True)
class Inspected:
    width: int
    height: int
    pixels_sha256: str
    hashes: np.ndarray  # near-duplicate hash set (reprotune/duplicates.py)
    alterations: tuple[str, ...]
    resized_copy: bytes | None


def inspect(path: Path, rules: Clean, data: DataConfig) -> Inspected:
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


def duplicate_groups(pixel_hashes: list[str], hashes: np.ndarray, max_distance: int | None) -> list[int]:
    """Group ids (0, 1, ... in order of first member): same pixels, or near duplicates within
    `max_distance` bits (reprotune/duplicates.py), joined transitively."""
    parent = list(range(len(pixel_hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        parent[max(root(i), root(j))] = min(root(i), root(j))

    first_with: dict[str, int] = {}
    for index, pixels in enumerate(pixel_hashes):
        join(index, first_with.setdefault(pixels, index))
    if max_distance is not None:
        for i, j in near_pairs(hashes, max_distance):
            join(i, j)
    numbering: dict[int, int] = {}
    return [numbering.setdefault(root(i), len(numbering)) for i in range(len(pixel_hashes))]


def stacked_hashes(kept: pd.DataFrame) -> np.ndarray:
    """The rows' hash sets as one (rows, HASHES, WORDS) array, in row order."""
    return np.stack(kept["hashes"].tolist()) if len(kept) else np.zeros((0, HASHES, WORDS), np.uint64)


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


def clean(params: Params) -> None:
    layout = Layout(params.paths)
    if layout.modality == "text":
        clean_texts(params, layout)
        return
    with atomic_output(layout.cleaned) as staging:
        staging.mkdir()
        with CopyPackWriter(staging / layout.resized_copies.name) as copies:
            kept, report = inspect_all(params, layout, copies)
            kept["resized"] = copies.finish(kept["resized"].tolist())
        save_hashes(staging / layout.duplicate_hashes.name, stacked_hashes(kept))  # row i: manifest row i
        kept[KEPT_COLUMNS].to_csv(staging / layout.clean_manifest.name, index=False)
    write_reports(layout, report, "files", "images")
    log.info(
        "kept %d of %d files (%s); %d resized copies",
        report["kept"],
        report["scanned"],
        report["dropped_by_reason"] or "none dropped",
        int((kept["resized"] >= 0).sum()),
    )


def write_reports(layout: Layout, report: dict, scanned: str, items: str) -> None:
    """cleaning.json, the class-balance plot and cleaning.md; `scanned` names what was scanned (files,
    rows) and `items` what was kept (images, texts)."""
    write_json(layout.cleaning_report, report)
    class_balance(report["classes_before"], report["classes_after"], layout.class_balance)
    write_text(layout.cleaning_summary, summary(report, layout.class_balance.name, scanned, items))


def inspect_all(params: Params, layout: Layout, copies: CopyPackWriter) -> tuple[pd.DataFrame, dict]:
    """Every ingested file checked: the kept rows (`resized` holding each copy's index in `copies`) and
    the cleaning report."""
    rules = params.clean
    data = data_config(params.backbone.name, params.backbone.input_size)
    manifest = layout.read_manifest(layout.ingest_manifest)
    relabels = read_relabels(layout.relabel, manifest)
    dropped: list[dict] = []
    altered: list[dict] = []
    relabelled: list[dict] = []
    rows: list[dict] = []
    for row in tqdm(
        manifest.itertuples(index=False), total=len(manifest), desc="clean", unit="img", disable=None
    ):
        if row.issue:
            dropped.append({"path": row.path, "reason": row.issue, "detail": ""})
            continue
        label = relabels.get(row.path, row.label)
        if label == DROP:
            dropped.append({"path": row.path, "reason": "relabel_drop", "detail": f"{layout.relabel}"})
            continue
        try:
            found = inspect(Path(row.path), rules, data)
        except Rejected as rejected:
            dropped.append({"path": row.path, "reason": rejected.reason, "detail": rejected.detail})
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
    require_two_classes(layout, kept, dropped, "images")
    return kept, cleaning_report(manifest, kept, dropped, altered, relabelled)


def require_two_classes(layout: Layout, kept: pd.DataFrame, dropped: list[dict], what: str) -> None:
    classes = sorted(kept["label"].unique())
    if len(classes) < 2:
        raise InputError(
            f"{layout.raw}: {len(kept)} usable {what} in {len(classes)} class(es) after cleaning; at least 2 "
            f"classes are needed ({len(dropped)} dropped; reasons: {dict(Counter(d['reason'] for d in dropped))})"
        )


def check_text(text: str, rules: Clean) -> tuple[str | None, dict | None]:
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


def clean_texts(params: Params, layout: Layout) -> None:
    rules = params.clean
    manifest = layout.read_manifest(layout.ingest_manifest)
    relabels = read_relabels(layout.relabel, manifest)
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
    kept = pd.DataFrame(rows, columns=TEXT_KEPT_COLUMNS)
    kept["group"] = pd.factorize(kept["group"])[0]
    kept, conflicts = resolve_conflicts(kept, rules.label_conflict)
    kept, copies = drop_exact_copies(kept)
    kept, small = enforce_class_size(kept, rules)
    dropped += conflicts + copies + small
    kept = kept.assign(group=pd.factorize(kept["group"])[0])
    require_two_classes(layout, kept, dropped, "texts")
    report = cleaning_report(manifest, kept, dropped, altered, relabelled, content="sha256")
    with atomic_output(layout.cleaned) as staging:
        staging.mkdir()
        kept[TEXT_KEPT_COLUMNS].to_csv(staging / layout.clean_manifest.name, index=False)
    write_reports(layout, report, "rows", "texts")
    log.info(
        "kept %d of %d rows (%s)",
        report["kept"],
        report["scanned"],
        report["dropped_by_reason"] or "none dropped",
    )


def cleaning_report(
    manifest: pd.DataFrame,
    kept: pd.DataFrame,
    dropped: list[dict],
    altered: list[dict],
    relabelled: list[dict],
    content: str = "pixels_sha256",
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


def class_balance(before: dict[str, int], after: dict[str, int], path: Path) -> None:
    """Images per class before and after cleaning, largest class first."""
    classes = sorted(set(before) | set(after), key=lambda c: (-before.get(c, 0), c))
    positions = np.arange(len(classes))
    figure, ax = plt.subplots(figsize=(min(30.0, max(6.0, 0.3 * len(classes) + 2)), 4.2))
    ax.bar(
        positions - 0.2, [before.get(c, 0) for c in classes], width=0.4, label="scanned", color="lightgrey"
    )
    ax.bar(positions + 0.2, [after.get(c, 0) for c in classes], width=0.4, label="kept")
    ax.set_xticks(positions, classes, rotation=90 if len(classes) > 8 else 0, fontsize=8)
    ax.set(ylabel="images", title="class balance")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    save(figure, path)


def summary(report: dict, plot_name: str, scanned: str = "files", items: str = "images") -> str:
    kinds = Counter(group["kind"] for group in report["duplicate_groups"])
    lines = [
        "# Cleaning summary",
        "",
        f"Scanned **{report['scanned']}** {scanned}: kept **{report['kept']}**, dropped **{report['dropped']}**.",
        "",
        f"| dropped because | {scanned} |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in report["dropped_by_reason"].items()],
        "",
        f"| kept, altered | {scanned} |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in report["altered_by_reason"].items()],
        "",
        f"Duplicate groups (kept together in one split): {kinds['exact']} of identical {items}, "
        f"{kinds['near']} of near-identical ones.",
        "",
        *(
            [
                f"Relabelled by your relabel file: {len(report['relabelled_files'])} {items} (listed in `cleaning.json`).",
                "",
            ]
            if report.get("relabelled_files")
            else []
        ),
        f"![class balance]({plot_name})",
        "",
        "| class | before | after |",
        "|---|---|---|",
        *[
            f"| {label} | {report['classes_before'].get(label, 0)} | {report['classes_after'].get(label, 0)} |"
            for label in sorted(set(report["classes_before"]) | set(report["classes_after"]))
        ],
        "",
        f"Every dropped and altered {scanned.removesuffix('s')}, with its reason, is listed in `cleaning.json`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    stage.run(clean)


if __name__ == "__main__":
    main()
