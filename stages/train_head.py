"""train_head: the linear probe (reprotune/models/probe.py) on the training split's frozen embeddings."""

from __future__ import annotations

import json
import logging

import torch
from safetensors.torch import load_file, save_file

from reprotune.models.probe import accuracy, choose_head
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_text
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.markdown import lines_of

log = logging.getLogger(__name__)


def train_head(params: Params) -> None:
    layout = Layout(params.paths)
    classes = read_json(layout.features_meta)["classes"]
    train = load_file(layout.features_file("train"))
    val = load_file(layout.features_file("val"))
    x_train, y_train = train["embeddings"].numpy(), train["labels"].numpy()
    x_val, y_val = val["embeddings"].numpy(), val["labels"].numpy()
    settings = params.train_head
    chosen = choose_head((x_train, y_train), (x_val, y_val), settings, len(classes))
    weight, bias, iterations = chosen.weight, chosen.bias, chosen.iterations
    converged = iterations < settings.max_iter
    summary = {
        "classes": classes,
        "C": chosen.C,
        "selection_metric": settings.selection_metric,
        "candidates": chosen.candidates,
        "iterations": iterations,
        "converged": converged,
        "train_accuracy": accuracy(weight, bias, x_train, y_train),
        "val_accuracy": accuracy(weight, bias, x_val, y_val) if len(y_val) else None,
    }
    if not converged:
        log.warning("the probe did not converge in %d iterations: raise train_head.max_iter", iterations)
    with atomic_output(layout.head) as staging:
        staging.mkdir()
        save_file(
            {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)},
            staging / layout.head_weights.name,
        )
        (staging / layout.head_meta.name).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    best = next(c for c in chosen.candidates if c["C"] == chosen.C)
    how = (
        f", the best on val by {settings.selection_metric.replace('_', ' ')} ({best['val_score']:.4f}) of "
        f"{len(chosen.candidates)} values"
        if len(chosen.candidates) > 1
        else ""
    )
    write_text(
        layout.report_section("train_head"),
        lines_of([f"- Head-only: logistic regression on frozen embeddings, C = {chosen.C:g}{how}."]),
    )
    log.info(
        "head: C %g, %d iterations, train accuracy %.4f, val accuracy %s",
        chosen.C,
        iterations,
        summary["train_accuracy"],
        "-" if summary["val_accuracy"] is None else f"{summary['val_accuracy']:.4f}",
    )


def main() -> None:
    stage.run(train_head)


if __name__ == "__main__":
    main()
