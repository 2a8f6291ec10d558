"""Benchmark class imbalance: class weights and the selection metric on long-tailed and on balanced data.

    .venv/bin/python -m benchmarks.bench_imbalance [--photos ../shared/data/cats-dogs] [--epochs 10]
        [--data sample photos] [--variants long_tail balanced] [--weights none balanced effective]
        [--samplers shuffle balanced] [--heads-only]

Data: the built-in sample (digits, 10 classes), the 60 real photos (cats and dogs) when present, and with
`--data text_sample` the text sample (Banking77, 77 intents), each as
split makes it (balanced) and long-tailed: the last class keeps 3% of its train and val items, the one before
it 10% (at least one each; with two classes, only the last, at 10%), drawn with a fixed seed; the test split is never touched, so every option is
scored on the same untouched test items.

For each data set, balanced and long-tailed, and each `class_weights` (none, balanced, effective) and
`finetune.sampler` (shuffle, balanced):
- the head (train_head's probe) fitted with those weights;
- finetune with those weights (the head starting from that probe), params.yaml's recipe for `--epochs`
  epochs. Every epoch's val and test logits are kept, so that each `selection_metric` (accuracy, macro_f1,
  balanced_accuracy) is applied to the same run afterwards, early stopping (finetune.patience) included:
  the metric changes which epoch is kept and when the run stops, not the training before it.

And the head's C: fitted with C = 1.0 (the one value before `train_head.C` took a list) against chosen from
params.yaml's list on val by each selection metric (`--heads-only` runs just these, no fine-tuning).

Reported on test, each with its 95% interval: macro-F1 and balanced accuracy (bootstrap, as evaluate
computes them), and the recall of each thinned class (Wilson). `none` + `accuracy` is the behaviour before
these options existed. Merged into reports/bench.json under "imbalance".
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from benchmarks.results import BENCH_FILE, print_table, save

WEIGHTS = ("none", "balanced", "effective")
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
TAIL = (0.10, 0.03)  # the kept share of the second-to-last and of the last class (train and val)
SEED = 0


def prepared(
    workdir: Path, raw: Path, sample: bool, cache: Path, long_tail: bool, epochs: int, modality: str
):
    """params for `raw` (empty: the `modality`'s sample) under `workdir` after ingest, clean, split (thinned
    when `long_tail`) and featurize; and the thinned classes."""
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.layout import Layout
    from reprotune.pipeline.resolve import for_data
    from stages import clean, featurize, ingest, split

    settings = yaml.safe_load(Path("params.yaml").read_text())
    shipped = Path(settings["paths"]["text_sample"]).resolve()  # read where it ships, not copied
    settings["paths"] = {key: str(workdir / value) for key, value in settings["paths"].items()}
    settings["paths"] |= {"raw": str(raw), "embedding_cache": str(cache), "text_sample": str(shipped)}
    settings["ingest"]["modality"] = modality
    settings["finetune"] |= {"epochs": epochs, "patience": epochs + 1}  # selection is applied afterwards
    params = for_data(params_module.validate(settings), modality, sample=sample)
    ingest.ingest(params)
    clean.clean(params)
    split.split(params)
    layout = Layout(params.paths)
    manifest = pd.read_csv(layout.split_manifest, dtype={"label": str}, keep_default_na=False)
    labels = sorted(manifest["label"].unique())
    shares = TAIL[: len(labels) - 1]  # at least one class keeps all of its items (two classes: one thinned)
    thinned = labels[-len(shares) :]
    if long_tail:
        rng = np.random.default_rng(SEED)
        dropped = []
        for label, share in zip(thinned, shares, strict=True):
            for part in ("train", "val"):
                rows = manifest.index[(manifest["label"] == label) & (manifest["split"] == part)]
                keep = max(1, round(share * len(rows)))
                dropped += list(rng.choice(rows, len(rows) - keep, replace=False))
        manifest.drop(index=dropped).to_csv(layout.split_manifest, index=False)
    featurize.featurize(params)
    return params, thinned


def scored(logits: np.ndarray, labels: np.ndarray, classes: list[str], thinned: list[str], resamples: int):
    from reprotune.reporting.metrics import class_recall, summary_metrics

    summary = summary_metrics(logits, labels, len(classes), len(classes), 15, resamples, SEED)  # no top-k
    recalls = class_recall(labels, logits.argmax(axis=1), len(classes))

    def interval(key: str) -> str:
        return f"{summary[key]:.3f} [{summary[f'{key}_ci_low']:.3f}, {summary[f'{key}_ci_high']:.3f}]"

    result = {"macro_f1": interval("macro_f1"), "balanced_accuracy": interval("balanced_accuracy")}
    for name in thinned:
        row = recalls[classes.index(name)]
        result[f"recall {name}"] = (
            f"{row['recall']:.3f} [{row['low']:.3f}, {row['high']:.3f}] ({row['found']}/{row['items']})"
        )
    return result, summary


def trajectory(params, weights: str, sampler: str):
    """train_head and finetune with `weights` (finetune drawing its batches by `sampler`); the val and test
    logits of every epoch (0: the probe)."""
    from reprotune.modalities import encoding as modality_encoding
    from reprotune.models.inference import Inference
    from reprotune.pipeline.layout import Layout
    from reprotune.training import finetune_run
    from stages import train_head

    params = params.model_copy(
        update={
            "train_head": params.train_head.model_copy(update={"class_weights": weights}),
            "finetune": params.finetune.model_copy(update={"class_weights": weights, "sampler": sampler}),
        }
    )
    train_head.train_head(params)
    layout = Layout(params.paths)
    encoding = modality_encoding.of(layout.modality)
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    run = Inference(torch.device("cpu"), 64, 0, params.backbone.channels_last)
    built, epochs = {}, []

    def logits_now() -> dict[str, np.ndarray]:
        model, backbone = built["model"], built["backbone"]
        model.eval()
        return {
            part: torch.cat(
                list(encoding.outputs(model, manifest[manifest["split"] == part], backbone, run, layout))
            ).numpy()
            for part in ("val", "test")
        }

    def build_and_keep(*args, **kwargs):
        built["backbone"], built["model"] = finetune_build(*args, **kwargs)
        epochs.append(logits_now())  # epoch 0, the starting model
        return built["backbone"], built["model"]

    finetune_build = finetune_run.build_model
    with mock.patch.object(finetune_run, "build_model", build_and_keep):
        finetune_run.run_finetune(
            params,
            layout,
            0,
            1,
            layout.checkpoint,
            on_epoch=lambda epoch, validation: epochs.append(logits_now()),
        )
    labels = {
        part: np.array([built_classes(layout).index(v) for v in manifest[manifest["split"] == part]["label"]])
        for part in ("val", "test")
    }
    return epochs, labels


def head_choices(params, layout, classes, thinned, weights: str, resamples: int) -> dict:
    """The head with C = 1.0 and with C chosen from params.yaml's list on val by each selection metric, all
    fitted with `weights`: scored on test, with the C kept."""
    from reprotune.models.probe import choose_head

    data = {part: load_file(layout.features_file(part)) for part in ("train", "val", "test")}
    x = {part: (t["embeddings"].numpy(), t["labels"].numpy()) for part, t in data.items()}
    listed = params.train_head.C if isinstance(params.train_head.C, list) else [params.train_head.C]
    found = {}
    for name, values, metric in [("C 1.0", 1.0, "macro_f1")] + [
        (f"C from {listed} by {metric}", listed, metric) for metric in METRICS
    ]:
        settings = params.train_head.model_copy(
            update={"C": values, "selection_metric": metric, "class_weights": weights}
        )
        chosen = choose_head(x["train"], x["val"], settings, len(classes))
        test_logits = x["test"][0] @ chosen.weight.T + chosen.bias
        key = f"head, class_weights {weights}, {name}"
        found[key], _ = scored(test_logits, x["test"][1], classes, thinned, resamples)
        found[key]["C"] = chosen.C
    return found


def built_classes(layout) -> list[str]:
    from reprotune.pipeline.atomic_io import read_json

    return read_json(layout.features_meta)["classes"]


def chosen_epoch(epochs: list[dict], val_labels: np.ndarray, metric: str, patience: int) -> int:
    """The epoch finetune keeps when `metric` picks: the loop's rule (a better score, or the same with a
    lower loss) and its early stop, replayed on the recorded val logits."""
    from scipy.special import log_softmax

    from reprotune.models.imbalance import selection_score

    best, best_key = 0, None
    for epoch, logits in enumerate(epochs):
        if epoch - best >= patience:
            break
        loss = -float(np.mean(log_softmax(logits["val"], axis=1)[np.arange(len(val_labels)), val_labels]))
        key = (selection_score(metric, val_labels, logits["val"].argmax(axis=1)), -loss)
        if best_key is None or key > best_key:
            best, best_key = epoch, key
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/cats-dogs"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument(
        "--data", nargs="+", default=["sample", "photos"], choices=["sample", "photos", "text_sample"]
    )
    parser.add_argument(
        "--variants", nargs="+", default=["long_tail", "balanced"], choices=["long_tail", "balanced"]
    )
    parser.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS)
    parser.add_argument(
        "--samplers", nargs="+", default=["shuffle", "balanced"], choices=["shuffle", "balanced"]
    )
    parser.add_argument("--heads-only", action="store_true", help="only the head's C, no fine-tuning")
    options = parser.parse_args()
    patience = yaml.safe_load(Path("params.yaml").read_text())["finetune"]["patience"]
    datasets = {"sample": None, "text_sample": None}
    datasets |= {"photos": options.photos} if options.photos.is_dir() else {}
    datasets = {name: raw for name, raw in datasets.items() if name in options.data}
    result: dict = {"epochs": options.epochs, "patience": patience, "tail_shares": list(TAIL)}
    earlier = json.loads(BENCH_FILE.read_text()).get("imbalance", {}) if BENCH_FILE.exists() else {}
    if all(earlier.get(k) == v for k, v in result.items()):  # the same set-up: keep the variants not run now
        result = {k: v for k, v in earlier.items() if k not in ("cores", "machine")}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "empty").mkdir()
        for name, raw in datasets.items():
            for long_tail in [v == "long_tail" for v in options.variants]:
                variant = f"{name}_{'long_tail' if long_tail else 'balanced'}"
                params, thinned = prepared(
                    root / variant,
                    raw or root / "empty",
                    raw is None,
                    root / "cache",
                    long_tail,
                    options.epochs,
                    "text" if name == "text_sample" else "image",
                )
                from reprotune.pipeline.layout import Layout

                layout = Layout(params.paths)
                classes = built_classes(layout)
                counts = pd.read_csv(layout.split_manifest, dtype={"label": str}, keep_default_na=False)
                counts = counts[counts["split"] == "train"]["label"].value_counts()
                found: dict = {"train_items": {c: int(counts.get(c, 0)) for c in thinned + classes[:1]}}
                for weights in options.weights:
                    heads = head_choices(params, layout, classes, thinned, weights, options.resamples)
                    found |= heads
                    rows += [(f"{variant}: {k}", v["macro_f1"], f"C {v['C']:g}") for k, v in heads.items()]
                if options.heads_only:
                    result[variant] = result.get(variant, {}) | found
                    save("imbalance", result)
                    continue
                for weights, sampler in [(w, s) for s in options.samplers for w in options.weights]:
                    epochs, labels = trajectory(params, weights, sampler)
                    drawn = "" if sampler == "shuffle" else f", sampler {sampler}"
                    head = load_file(layout.head_weights)
                    test = load_file(layout.features_file("test"))
                    head_logits = (test["embeddings"] @ head["weight"].T + head["bias"]).numpy()
                    found[f"head, class_weights {weights}"], _ = scored(
                        head_logits, test["labels"].numpy(), classes, thinned, options.resamples
                    )
                    for metric in METRICS:
                        epoch = chosen_epoch(epochs, labels["val"], metric, patience)
                        key = f"finetune, class_weights {weights}{drawn}, selection {metric}"
                        found[key], summary = scored(
                            epochs[epoch]["test"], labels["test"], classes, thinned, options.resamples
                        )
                        found[key]["epoch"] = epoch
                        rows.append((f"{variant}: {key}", found[key]["macro_f1"], f"epoch {epoch}"))
                result[variant] = result.get(variant, {}) | found
                save("imbalance", result)
    print_table("imbalance: test macro-F1 [95% interval]", rows)


if __name__ == "__main__":
    main()
