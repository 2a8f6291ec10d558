"""baseline: how well a model that transfers nothing does on the same split, the bar transfer has to clear.

The model is the modality's classic one (reprotune/modalities/baselines.py): pixels with logistic
regression or an RBF SVM for images, TF-IDF with logistic regression for texts; each candidate is chosen on
val, and test is never looked at here.

Writes `scores.safetensors` (log-probabilities on val and test, which evaluate scores like the other models'
logits) and `baseline.json` (the choice and every candidate's val accuracy).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from reprotune.modalities import baselines
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, write_text
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.markdown import lines_of

log = logging.getLogger(__name__)

SCORED_SPLITS = ("val", "test")


def baseline(params: Params) -> None:
    layout = Layout(params.paths)
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    classes = sorted(manifest["label"].unique())  # as featurize numbers them, and in its row order below
    baseline_model = baselines.of(layout.modality)
    scores, found = baseline_model.fit(params.baseline, params.clean.background, layout, manifest, classes)
    write_baseline(layout, manifest, classes, scores, found)
    recorded = json.loads(json.dumps(found))  # as baseline.json holds it
    write_text(
        layout.report_section("baseline"),
        lines_of([f"- Baseline (no transfer): {baseline_model.describe(recorded)}."]),
    )


def write_baseline(
    layout: Layout, manifest: pd.DataFrame, classes: list[str], scores: dict[str, np.ndarray], found: dict
) -> None:
    summary = {
        "classes": classes,
        "paths": {
            split: manifest.loc[manifest["split"] == split, "path"].tolist() for split in SCORED_SPLITS
        },
        **found,
    }
    best, tried = summary["chosen"], summary["candidates"]
    with atomic_output(layout.baseline) as staging:
        staging.mkdir()
        save_file({s: torch.from_numpy(v) for s, v in scores.items()}, staging / layout.baseline_scores.name)
        (staging / layout.baseline_meta.name).write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
    log.info(
        "baseline: %s chosen on val (accuracy %.4f) of %d candidates",
        best,
        summary["val_accuracy"],
        len(tried),
    )


def main() -> None:
    stage.run(baseline)


if __name__ == "__main__":
    main()
