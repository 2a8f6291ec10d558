"""label_issues: images whose label is probably wrong, by confident learning (cleanlab) on out-of-sample
probabilities.

Every kept image (train, val and test) gets probabilities from a head (the same probe as train_head) that
did not see it: K-fold cross-validation on the cached embeddings, stratified by class, with each duplicate
group inside one fold (a copy in the training folds would vouch for its twin's label). cleanlab's
`find_label_issues` then flags the images whose given label the probabilities contradict, ranked by
self-confidence (the probability of the given label; lowest first).

Writes `reports/label_issues.csv` (rank, path, split, given and suggested label, score) and
`reports/label_issues.png` (the top suspects with both labels). Nothing is changed: to act on a row, copy its
path into `paths.relabel` (data/relabel.csv) with the right label or `drop`; clean applies it and reports it.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from safetensors.torch import load_file
from sklearn.model_selection import StratifiedGroupKFold

from reprotune.modalities import showing as modality_showing
from reprotune.models.probe import chosen_C, fit_linear_head, probabilities
from reprotune.pipeline import data_kind, stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import SPLITS, Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.markdown import lines_of
from reprotune.reporting.progress import progress

log = logging.getLogger(__name__)

COLUMNS = ["rank", "path", "split", "given_label", "suggested_label", "score", "suggested_probability"]


def out_of_fold_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray, params: Params, num_classes: int, C: float
) -> np.ndarray:
    """Each image's class probabilities from a head fitted on the other folds, with train_head's chosen `C`."""
    settings = params.label_issues
    folds = min(settings.folds, len(np.unique(groups)))
    if folds < 2:
        raise InputError("label_issues needs at least 2 duplicate groups to cross-validate; the data has 1")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=settings.seed)
    result = np.zeros((len(labels), num_classes))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # "least populated class has fewer members than n_splits"
        folded = splitter.split(embeddings, labels, groups)
        for train, held_out in progress(folded, "label_issues: cross-validation", unit="fold", total=folds):
            weight, bias, _ = fit_linear_head(
                embeddings[train], labels[train], params.train_head, num_classes, C
            )
            result[held_out] = probabilities(weight, bias, embeddings[held_out])
    return result


def ranked_issues(labels: np.ndarray, probs: np.ndarray, filter_by: str) -> np.ndarray:
    """Indices of the images cleanlab flags, most suspicious (lowest probability of the given label) first."""
    if len(np.unique(labels)) < 2:
        return np.zeros(0, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about tiny classes; they are still handled
        # n_jobs=1: by default cleanlab forks a process pool, and a fork of this process (BLAS and OpenMP
        # threads running) hung under `dvc queue` workers; one process takes well under a second here.
        return np.asarray(
            find_label_issues(
                labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1
            ),
            dtype=int,
        )


def issues_frame(
    indices: np.ndarray, rows: pd.DataFrame, labels: np.ndarray, probs: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    suggested = probs.argmax(axis=1)
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(indices) + 1),
            "path": rows["path"].to_numpy()[indices],
            "split": rows["split"].to_numpy()[indices],
            "given_label": [classes[i] for i in labels[indices]],
            "suggested_label": [classes[i] for i in suggested[indices]],
            "score": probs[indices, labels[indices]].round(6),
            "suggested_probability": probs[indices, suggested[indices]].round(6),
        },
        columns=COLUMNS,
    )


def all_embeddings(layout: Layout) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(rows: path, split, group; embeddings; labels) of every kept image, train then val then test."""
    meta = read_json(layout.features_meta)
    groups = layout.read_manifest(layout.split_manifest, {"label": str}).set_index("path")["group"]
    embeddings, labels, rows = [], [], []
    for split in SPLITS:
        tensors = load_file(layout.features_file(split))
        embeddings.append(tensors["embeddings"].numpy())
        labels.append(tensors["labels"].numpy())
        rows.append(pd.DataFrame({"path": meta["paths"][split], "split": split}))
    frame = pd.concat(rows, ignore_index=True)
    frame["group"] = groups.loc[frame["path"]].to_numpy()
    return frame, np.concatenate(embeddings), np.concatenate(labels)


def section(issues: pd.DataFrame, total: int, items: str, column: str, relabel: str) -> list[str]:
    """label_issues' part of report.md: the ten most suspicious labels, and how to act on them."""
    lines = ["## Which labels are probably wrong?", ""]
    if issues.empty:
        return lines + [f"Cross-validated confident learning flagged none of the {total} kept {items}.", ""]
    by_split = ", ".join(f"{split} {count}" for split, count in issues["split"].value_counts().items())

    def shown(row) -> str:
        item = getattr(row, column)
        if item == row.path:  # the file is the item (an image)
            return f"`{row.path}`"
        words = " ".join(item.split()).replace("|", "\\|")
        return f"`{row.path}`: {words if len(words) <= 100 else words[:97] + '...'}"

    return lines + [
        f"Cross-validated confident learning (cleanlab) flags {len(issues)} of {total} kept {items} ({by_split}) "
        "whose given label the out-of-fold probabilities contradict; all are listed in `label_issues.csv`, most "
        f"suspicious first. Look before you act: to fix one, add its path and the right label (or `drop`) to "
        f"`{relabel}` and run `dvc repro`; clean applies it and says so in `cleaning.md`.",
        "",
        "| rank | path | split | given | suggested | p(given) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {row.rank} | {shown(row)} | {row.split} | {row.given_label} | {row.suggested_label} | {float(row.score):.3f} |"
            for row in issues.head(10).itertuples()
        ],
        "",
        "![label issues](label_issues.png)",
        "",
    ]


def label_issues(params: Params) -> None:
    layout = Layout(params.paths)
    classes = read_json(layout.features_meta)["classes"]
    rows, embeddings, labels = all_embeddings(layout)
    probs = out_of_fold_probabilities(
        embeddings, labels, rows["group"].to_numpy(), params, len(classes), chosen_C(layout.head_meta)
    )
    indices = ranked_issues(labels, probs, params.label_issues.filter_by)
    frame = issues_frame(indices, rows, labels, probs, classes)
    kind = data_kind.read(layout.data_kind)
    showing = modality_showing.of(kind.modality)
    if showing.column not in frame.columns:  # e.g. the text itself, so that the file can be read (and
        # relabel.csv written) without looking it up
        shown = layout.read_manifest(layout.split_manifest).set_index("path")[showing.column]
        frame[showing.column] = shown.loc[frame["path"]].to_numpy()
    with atomic_output(layout.label_issues) as temporary:
        frame.to_csv(temporary, index=False)
    top = frame.head(params.label_issues.gallery_size)
    captions = [
        (
            getattr(row, showing.column),
            f"{row.split}: given {row.given_label}\nsuggested {row.suggested_label} ({row.score:.0%} for given)",
        )
        for row in top.itertuples()
    ]
    title = (
        f"probable label errors: the {len(top)} most suspicious of {len(frame)} flagged"
        if len(frame)
        else "no probable label errors found"
    )
    showing.figure(captions, params.clean.background, title, layout.label_issues_gallery)
    written = pd.read_csv(layout.label_issues, dtype=str, keep_default_na=False)  # as the file reads
    write_text(
        layout.report_section("label_issues"),
        lines_of(section(written, len(labels), kind.items, showing.column, params.paths.relabel)),
    )
    log.info(
        "%d of %d flagged as probable label errors (%s)",
        len(frame),
        len(labels),
        ", ".join(f"{split} {count}" for split, count in frame["split"].value_counts().items()) or "none",
    )


def main() -> None:
    stage.run(label_issues)


if __name__ == "__main__":
    main()
