"""reports/report.md: one page that explains a run to someone who never opens MLflow."""

from __future__ import annotations

from collections import Counter

from reprotune.params import Params

PLOTS = [
    ("Confusion matrices", ["confusion_head.png", "confusion_finetune.png"]),
    ("Per-class F1", ["per_class_f1.png"]),
    ("Precision-recall (one vs rest)", ["pr_head.png", "pr_finetune.png"]),
    ("Calibration", ["reliability.png"]),
    ("Fine-tuning curves", ["training_curves.png"]),
    ("Most confident mistakes", ["mistakes_head.png", "mistakes_finetune.png"]),
]


def _value(key: str, split: dict) -> str:
    if key not in split:
        return "–"
    value = split[key]
    if key == "accuracy" and "accuracy_ci_low" in split:
        return f"{value:.4f} [{split['accuracy_ci_low']:.4f}, {split['accuracy_ci_high']:.4f}]"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(metrics: dict) -> list[str]:
    columns = [(model, split) for model in metrics for split in metrics[model]]
    keys = list(dict.fromkeys(k for model, split in columns for k in metrics[model][split]))
    keys = [k for k in keys if k not in ("accuracy_ci_low", "accuracy_ci_high")]
    lines = [
        "| metric | " + " | ".join(f"{model} {split}" for model, split in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key in keys:
        cells = [_value(key, metrics[model][split]) for model, split in columns]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


def straddling(splits: dict) -> str:
    count = len(splits.get("groups_straddling_given_splits", []))
    return f" except {count} that given split folders put apart" if count else ""


def split_origin(splits: dict) -> str:
    """Which splits came from the data's split folders and which were carved, from what and how much."""
    given = ", ".join(f"{name}/" for name in splits["given"])
    carved = "; ".join(
        f"{name} carved from {entry['from']} ({entry['fraction']:.0%} of each class, {entry['images']} images)"
        for name, entry in splits["carved"].items()
    )
    if not given:
        return f"no split folders; {carved}."
    return f"given as {given}" + (f"; {carved}." if carved else ".")


def render(
    params: Params,
    metrics: dict,
    per_class: dict,
    cleaning: dict,
    splits: dict,
    features: dict,
    finetuned: dict,
    source: str,
) -> str:
    settings = params.finetune
    kinds = Counter(group["kind"] for group in cleaning["duplicate_groups"])
    lines = [
        "# reprotune run report",
        "",
        "## Data",
        "",
        f"- Scanned {cleaning['scanned']} files from {source}: kept "
        f"{cleaning['kept']}, dropped {cleaning['dropped']}"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in cleaning['dropped_by_reason'].items())})."
            if cleaning["dropped"]
            else "."
        ),
        f"- Duplicate groups, each kept inside one split{straddling(splits)}: {kinds['exact']} of identical images, "
        f"{kinds['near']} of "
        f"near-identical ones (resized, recompressed, cropped or framed copies: hashes within "
        f"{params.clean.near_duplicate_distance} bits of 256). Near-duplicate pairs across splits: "
        f"{splits['leakage']['near_duplicate_pairs_across_splits']}; similar pairs across splits (within "
        f"{splits['leakage']['checked_distance']} bits, not grouped; listed in `split.json`): "
        f"{splits['leakage']['similar_pairs_across_splits']}.",
        f"- Splits: {split_origin(splits)}",
        f"- {len(features['classes'])} classes. Images per split: "
        + ", ".join(f"{split} {sum(counts.values())}" for split, counts in splits["counts"].items())
        + ". Details: `cleaning.md`, `cleaning.json`, `split.json`.",
        "",
        "## Model",
        "",
        f"- Backbone `{features['backbone']}`, weights: {features['weights']}.",
        f"- Input {features['data_config']['input_size']} px, {features['data_config']['interpolation']} "
        f"resize, mean {list(features['data_config']['mean'])}, std {list(features['data_config']['std'])}.",
        f"- Head-only: logistic regression on frozen embeddings, C = {params.train_head.C}.",
        f"- Fine-tuned: strategy `{settings.strategy}`"
        + (f" (last {settings.unfreeze_last_n} layer groups)" if settings.strategy == "last_n" else "")
        + f", {finetuned['epochs_run']} of {settings.epochs} epochs on {finetuned['device']}, lr {settings.lr}"
        f" (backbone x{settings.backbone_lr_factor}), batch {settings.batch_size}; best validation epoch "
        f"{finetuned['best_epoch']} (0 = the probe's head unchanged).",
        "",
        "## Metrics",
        "",
        f"Accuracy is followed by its 95% bootstrap interval [`accuracy_ci_low`, `accuracy_ci_high`] "
        f"({params.evaluate.bootstrap_resamples} resamples of the images). `ece` is the "
        f"expected calibration error over {params.evaluate.calibration_bins} bins"
        + (
            "; `ece_temperature_scaled` uses a temperature fitted on val."
            if params.evaluate.temperature_scaling
            else "."
        ),
        "",
        *metrics_table(metrics),
        "",
        "## Per class (test)",
        "",
        "| class | support | head F1 | fine-tuned F1 | fine-tuned precision | fine-tuned recall |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {row['support']} | {per_class['head']['classes'][name]['f1']:.3f} | {row['f1']:.3f} "
            f"| {row['precision']:.3f} | {row['recall']:.3f} |"
            for name, row in per_class["finetune"]["classes"].items()
        ],
        "",
        "## Exported models",
        "",
        "The fine-tuned network as ONNX (float32 and int8) against torch on the test split: accuracy with its "
        "interval, macro-F1, agreement, size, in [`export.md`](export.md), which the export stage writes after "
        "this report.",
        "",
        "## Plots",
        "",
    ]
    for title, files in PLOTS:
        lines += [f"### {title}", "", *[f"![{name}](plots/{name})" for name in files], ""]
    return "\n".join(lines)
