"""clean: check every ingested image or text and keep only those the later stages can trust.

The checks are the modality's (reprotune/modalities/image/cleaning.py: decoding, resized copies, near
duplicates by perceptual hashes; reprotune/modalities/text/cleaning.py: empty and over-long texts,
duplicates after normalisation); what follows them holds for both (reprotune/data/cleaning_steps.py): a
duplicate group under two labels follows `clean.label_conflict`, classes under `clean.min_class_size`
follow `clean.small_class`, and a duplicate group is the unit split keeps inside one split.

Each dropped file or row gets one row in `reports/cleaning.json` (path, reason, detail); so does each kept
one that was altered (an image converted to RGB or turned by its EXIF orientation, a text cut to length).
`kept + dropped = scanned` always holds.

Label fixes come from `paths.relabel` (data/relabel.csv, yours to edit: `path,label` rows, label a class or
`drop`), applied before duplicates and conflicts are resolved, and listed in the report; the data files
themselves are never touched. With no rows in it, nothing in the outputs mentions it.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reprotune.data.cleaning_steps import DROP
from reprotune.modalities import cleaning as modality_cleaning
from reprotune.modalities.cleaning import Cleaning
from reprotune.pipeline import data_kind, stage
from reprotune.pipeline.atomic_io import atomic_output, write_json, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Clean, Params
from reprotune.reporting.figures import save
from reprotune.reporting.markdown import lines_of

log = logging.getLogger(__name__)

RELABEL_COLUMNS = ["path", "label"]


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


def clean(params: Params) -> None:
    layout = Layout(params.paths)
    kind = data_kind.read(layout.data_kind)
    cleaning = modality_cleaning.of(kind.modality)
    manifest = layout.read_manifest(layout.ingest_manifest)
    relabels = read_relabels(layout.relabel, manifest)
    with atomic_output(layout.cleaned) as staging:
        staging.mkdir()
        kept, report = cleaning.clean(
            manifest,
            relabels,
            params.clean,
            (params.backbone.name, params.backbone.input_size),
            layout,
            staging,
        )
    write_reports(layout, report, cleaning.units, cleaning.items)
    write_text(
        layout.report_section("clean"), lines_of(section(report, kind.sample, layout, cleaning, params.clean))
    )
    log.info(
        "kept %d of %d %s (%s)",
        report["kept"],
        report["scanned"],
        cleaning.units,
        report["dropped_by_reason"] or "none dropped",
    )


def section(report: dict, sample: bool, layout: Layout, cleaning: Cleaning, rules: Clean) -> list[str]:
    """clean's part of report.md: what was scanned, kept and dropped, and the duplicate groups; that the
    built-in sample ran, when it did."""
    source = cleaning.sample if sample else f"`{layout.raw}`"
    kinds = Counter(group["kind"] for group in report["duplicate_groups"])
    dropped = ", ".join(f"{k}: {v}" for k, v in report["dropped_by_reason"].items())
    return [
        f"- Scanned {report['scanned']} {cleaning.units} from {source}: kept {report['kept']}, dropped "
        f"{report['dropped']}" + (f" ({dropped})." if report["dropped"] else "."),
        *(
            [
                f"- **{source.capitalize()} ran because `{layout.raw}` holds no files**: put your "
                f"{cleaning.items} there to train on them (README: Your own data)."
            ]
            if sample
            else []
        ),
        f"- Duplicate groups (split keeps each in one split, unless given splits put it apart): {kinds['exact']} of identical "
        f"{cleaning.items}, {kinds['near']} of {cleaning.near_duplicates(rules)}.",
    ]


def write_reports(layout: Layout, report: dict, scanned: str, items: str) -> None:
    """cleaning.json, the class-balance plot and cleaning.md; `scanned` names what was scanned (files,
    rows) and `items` what was kept (images, texts)."""
    write_json(layout.cleaning_report, report)
    class_balance(report["classes_before"], report["classes_after"], layout.class_balance)
    write_text(layout.cleaning_summary, summary(report, layout.class_balance.name, scanned, items))


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
