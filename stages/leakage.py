"""leakage: a second check for copies across splits, on the frozen backbone's embeddings.

split's own check runs on clean's detector (perceptual hashes for images), which some copies escape: a
half-size, recompressed copy of a noisy, high-frequency picture can land a few bits beyond the grouping
distance. The embeddings see through such changes, so every pair of items in different splits whose
embeddings' cosine is above `leakage.min_cosine` is listed here (reports/leakage.csv, most similar first)
and counted in report.md, to review. Grouping stays on clean's detector, so the splits never depend on the
backbone; this stage only reports. `leakage.min_cosine` (auto) was chosen with
benchmarks/bench_duplicates.py (docs/near-duplicates.md).
"""

from __future__ import annotations

import csv
import logging

from reprotune.data.similar_embeddings import MAX_LISTED, pairs_across
from reprotune.data.tensorfiles import open_rows
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_json, write_text
from reprotune.pipeline.layout import SPLITS, Layout
from reprotune.pipeline.params import Params
from reprotune.pipeline.resolve import decisions
from reprotune.reporting.markdown import lines_of

log = logging.getLogger(__name__)

SHOWN = 5  # pairs named in report.md


def leakage(params: Params) -> None:
    layout = Layout(params.paths)
    min_cosine = params.leakage.min_cosine
    meta = read_json(layout.features_meta)
    paths = meta["paths"]
    if min_cosine is None:
        count, pairs = 0, []
    else:
        embeddings = {split: open_rows(layout.features_file(split), "embeddings") for split in SPLITS}
        count, pairs = pairs_across(embeddings, min_cosine)  # memory maps, read a tile or a block at a time
    rows = [
        {
            "cosine": f"{pair.cosine:.4f}",
            "split_a": pair.split_a,
            "path_a": paths[pair.split_a][pair.row_a],
            "split_b": pair.split_b,
            "path_b": paths[pair.split_b][pair.row_b],
        }
        for pair in pairs
    ]
    with (
        atomic_output(layout.leakage_pairs) as staging,
        staging.open("w", newline="", encoding="utf-8") as out,
    ):
        writer = csv.DictWriter(out, ["cosine", "split_a", "path_a", "split_b", "path_b"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "backbone": meta["backbone"],
        "min_cosine": min_cosine,
        "pairs_across_splits": count,
        "listed": len(rows),
    }
    write_json(layout.leakage_report, summary)
    choice = decisions(params).get("leakage.min_cosine")
    source = f"auto: {choice.why}" if choice is not None and choice.written == "auto" else "params.yaml"
    write_text(layout.report_section("leakage"), lines_of([sentence(summary, rows, source)]))
    if count:
        log.warning(
            "%d pairs across splits have embeddings at cosine > %s: copies clean's grouping may have missed, to "
            "review in %s (first: %s ~ %s, %s)",
            count,
            min_cosine,
            layout.leakage_pairs,
            rows[0]["path_a"],
            rows[0]["path_b"],
            rows[0]["cosine"],
        )


def sentence(summary: dict, rows: list[dict], source: str) -> str:
    """report.md's bullet; `source`: where `leakage.min_cosine` came from."""
    if summary["min_cosine"] is None:
        return f"- Embedding leakage check: off (`leakage.min_cosine` null; {source})."
    head = (
        f"- Embedding leakage check (cosine of `{summary['backbone']}` embeddings > {summary['min_cosine']}, "
        "across splits): "
    )
    if not summary["pairs_across_splits"]:
        return head + "no pair."
    named = "; ".join(
        f"`{row['path_a']}` ({row['split_a']}) ~ `{row['path_b']}` ({row['split_b']}) {row['cosine']}"
        for row in rows[:SHOWN]
    )
    listed = summary["listed"] < summary["pairs_across_splits"]
    more = f" (the {MAX_LISTED:,} most similar)" if listed else ""
    return (
        head + f"**{summary['pairs_across_splits']} pairs**, copies clean's grouping may have missed: "
        f"{named}. All in `reports/leakage.csv`{more}, to review: where one of a pair is a copy, a `drop` row for "
        "it in data/relabel.csv leaves it out."
    )


def main() -> None:
    stage.run(leakage)


if __name__ == "__main__":
    main()
