"""clean: decode every image in full and keep only those the later stages can trust.

Each dropped file gets one row in `reports/cleaning.json` (path, reason, detail); the kept manifest gives
every image a duplicate group (images with identical decoded pixels share one), which the split stage
keeps together. `kept + dropped = scanned` always holds.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from reprotune import stage
from reprotune.images import to_rgb, upright
from reprotune.layout import Layout, atomic_output, write_json, write_text
from reprotune.params import Clean, Params

log = logging.getLogger(__name__)

KEPT_COLUMNS = ["path", "label", "given_split", "width", "height", "sha256", "pixels_sha256", "group"]


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def inspect(path: Path, rules: Clean) -> tuple[int, int, str]:
    """Decode `path` fully under the rules; return (width, height, sha256 of the RGB pixels) or raise Rejected."""
    if path.stat().st_size == 0:
        raise Rejected("empty_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Rejected("decompression_bomb", str(error)) from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise Rejected("not_an_image", str(error) or type(error).__name__) from None
    with image:
        if image.format not in rules.formats:
            raise Rejected("format_not_allowed", f"{image.format}; allowed: {', '.join(rules.formats)}")
        width, height = image.size
        if width * height > rules.max_pixels:  # from the header alone: no decode of a huge image
            raise Rejected("too_many_pixels", f"{width}x{height} > clean.max_pixels={rules.max_pixels}")
        try:
            image.load()
            rgb = to_rgb(upright(image), tuple(rules.background))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise Rejected("truncated_or_corrupt", str(error) or type(error).__name__) from None
    width, height = rgb.size
    if min(width, height) < rules.min_side:
        raise Rejected("too_small", f"{width}x{height}; clean.min_side={rules.min_side}")
    if max(width, height) / min(width, height) > rules.max_aspect_ratio:
        raise Rejected("extreme_aspect", f"{width}x{height}; clean.max_aspect_ratio={rules.max_aspect_ratio}")
    pixels = hashlib.sha256(f"{width}x{height}".encode() + rgb.tobytes()).hexdigest()
    return width, height, pixels


def assign_groups(kept: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Images with identical decoded pixels form one group; a group under two labels is a label conflict."""
    kept = kept.copy()
    kept["group"] = kept.groupby("pixels_sha256", sort=False).ngroup()
    labels_per_group = kept.groupby("group")["label"].nunique()
    conflicted = kept["group"].isin(labels_per_group[labels_per_group > 1].index)
    return kept, conflicted


def clean(params: Params) -> None:
    layout = Layout(params.paths)
    manifest = pd.read_csv(layout.ingest_manifest, dtype=str, keep_default_na=False)
    dropped: list[dict] = []
    kept_rows: list[dict] = []
    for row in tqdm(
        manifest.itertuples(index=False), total=len(manifest), desc="clean", unit="img", disable=None
    ):
        if row.issue:
            dropped.append({"path": row.path, "reason": row.issue, "detail": ""})
            continue
        try:
            width, height, pixels = inspect(Path(row.path), params.clean)
        except Rejected as rejected:
            dropped.append({"path": row.path, "reason": rejected.reason, "detail": rejected.detail})
            continue
        kept_rows.append(
            {
                "path": row.path,
                "label": row.label,
                "given_split": row.given_split,
                "width": width,
                "height": height,
                "sha256": row.sha256,
                "pixels_sha256": pixels,
            }
        )
    kept = pd.DataFrame(kept_rows, columns=KEPT_COLUMNS[:-1])
    kept, conflicted = assign_groups(kept)
    for path, label in kept.loc[conflicted, ["path", "label"]].itertuples(index=False):
        dropped.append(
            {"path": path, "reason": "label_conflict", "detail": f"same pixels under another label ({label})"}
        )
    kept = kept[~conflicted]

    classes = sorted(kept["label"].unique())
    if len(classes) < 2:
        raise stage.InputError(
            f"{layout.raw}: {len(kept)} usable images in {len(classes)} class(es) after cleaning; at least 2 classes "
            f"are needed (see {layout.cleaning_report} for the {len(dropped)} dropped files)"
        )
    duplicate_groups = [sorted(group["path"]) for _, group in kept.groupby("group") if len(group) > 1]
    report = {
        "scanned": len(manifest),
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(Counter(d["reason"] for d in dropped).items())),
        "classes_before": dict(sorted(Counter(manifest.loc[manifest["label"] != "", "label"]).items())),
        "classes_after": dict(sorted(Counter(kept["label"]).items())),
        "duplicate_groups": duplicate_groups,
        "dropped_files": sorted(dropped, key=lambda d: d["path"]),
    }
    assert report["kept"] + report["dropped"] == report["scanned"], "every scanned file is kept or dropped"
    with atomic_output(layout.cleaned) as staging:
        staging.mkdir()
        kept.to_csv(staging / layout.clean_manifest.name, index=False)
    write_json(layout.cleaning_report, report)
    write_text(layout.cleaning_summary, summary(report))
    log.info(
        "kept %d of %d files (%s)", len(kept), len(manifest), report["dropped_by_reason"] or "none dropped"
    )


def summary(report: dict) -> str:
    lines = [
        "# Cleaning summary",
        "",
        f"Scanned **{report['scanned']}** files: kept **{report['kept']}**, dropped **{report['dropped']}**.",
        "",
        "| reason | files |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in report["dropped_by_reason"].items()],
        "",
        f"{len(report['duplicate_groups'])} groups of identical images (kept together in one split).",
        "",
        "| class | before | after |",
        "|---|---|---|",
        *[
            f"| {label} | {report['classes_before'].get(label, 0)} | {report['classes_after'].get(label, 0)} |"
            for label in sorted(set(report["classes_before"]) | set(report["classes_after"]))
        ],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    stage.run(clean)


if __name__ == "__main__":
    main()
