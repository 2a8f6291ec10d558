"""reports/report.md: one page that explains a run to someone who never opens MLflow."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from reprotune.data_kind import TEXT, DataKind
from reprotune.params import Params
from reprotune.resolve import decisions

PLOTS = [
    ("Confusion matrices", ["confusion_head.png", "confusion_finetune.png"]),
    ("Per-class F1 (baseline, head-only, fine-tuned)", ["per_class_f1.png"]),
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


def split_origin(splits: dict, items: str = "images") -> str:
    """Which splits came from the data's split folders and which were carved, from what and how much."""
    given = ", ".join(f"{name}/" for name in splits["given"])
    carved = "; ".join(
        f"{name} carved from {entry['from']} ({entry['fraction']:.0%} of each class, {entry['images']} {items})"
        for name, entry in splits["carved"].items()
    )
    if not given:
        return f"no split folders; {carved}."
    return f"given as {given}" + (f"; {carved}." if carved else ".")


def describe_baseline(baseline: dict) -> str:
    chosen = baseline["chosen"]
    if chosen["model"] == "tfidf_logistic_regression":
        return (
            f"logistic regression (C = {chosen['C']:g}) on TF-IDF of word unigrams and bigrams "
            f"({baseline['features']} terms from the training texts), the best on val of "
            f"{len(baseline['candidates'])} candidates"
        )
    model = (
        f"an RBF SVM (C = {chosen['C']:g}, gamma = {chosen['gamma']:g} / {baseline['features']} features)"
        if chosen["model"] == "rbf_svm"
        else f"logistic regression (C = {chosen['C']:g})"
    )
    capped = (
        f", trained on a stratified {baseline['training_images_used']} of the {baseline['training_images']} "
        "training images (`baseline.max_train_images`)"
        if baseline["training_images_used"] < baseline["training_images"]
        else ""
    )
    return (
        f"{model} on the raw pixels ({baseline['image_size']}x{baseline['image_size']}, standardised), the best "
        f"on val of {len(baseline['candidates'])} candidates{capped}"
    )


def mistakes_section(mistakes: dict, shown_as: str) -> list[str]:
    """The most confident mistakes on test, each item as `shown_as` (its text; an image's path, whose
    pictures are under Plots)."""
    lines = ["## Most confident mistakes (test)", ""]
    names = {"head": "Head-only", "finetune": "Fine-tuned"}
    for model, rows in mistakes.items():
        lines += [f"{names.get(model, model)}:", ""]
        if not rows:
            lines += ["No mistakes.", ""]
            continue
        lines += [f"| {shown_as} | true | predicted | confidence |", "|---|---|---|---|"]
        for text, true, predicted, confidence in rows:
            shown = " ".join(text.split()).replace("|", "\\|")
            shown = shown if len(shown) <= 160 else shown[:157] + "..."
            lines.append(f"| {shown} | {true} | {predicted} | {confidence:.0%} |")
        lines.append("")
    return lines


def transfer_verdict(metrics: dict) -> str:
    """Whether each transfer model beats the baseline on test, with how much the intervals say."""
    base = metrics["baseline"]["test"]
    parts = []
    for model, name in (("head", "The head"), ("finetune", "The fine-tuned network")):
        test = metrics[model]["test"]
        gap = (test["accuracy"] - base["accuracy"]) * 100
        overlap = (
            test["accuracy_ci_low"] <= base["accuracy_ci_high"]
            and base["accuracy_ci_low"] <= test["accuracy_ci_high"]
        )
        where = "above" if gap > 0 else "below" if gap < 0 else "level with"
        size = f"{abs(gap):.1f} points " if gap else ""
        parts.append(
            f"{name} is {size}{where} the baseline on test"
            + (" (the 95% intervals overlap)." if overlap else " (the 95% intervals do not overlap).")
        )
    return " ".join(parts)


def issues_section(issues: pd.DataFrame, total: int, relabel: str) -> list[str]:
    items = "texts" if "text" in issues.columns else "images"
    if issues.empty:
        return [f"Cross-validated confident learning flagged none of the {total} kept {items}.", ""]
    by_split = ", ".join(f"{split} {count}" for split, count in issues["split"].value_counts().items())
    text = "text" in issues.columns

    def shown(row) -> str:
        if not text:
            return f"`{row.path}`"
        words = " ".join(row.text.split()).replace("|", "\\|")
        return f"`{row.path}`: {words if len(words) <= 100 else words[:97] + '...'}"

    lines = [
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
    return lines


def gap_recovered(metrics: dict, split: str) -> str:
    """How much of the teacher's lead over the label-only student the distilled student closed."""
    teacher, distilled, alone = (
        metrics[m][split]["accuracy"] for m in ("finetune", "distilled", "label_only")
    )
    if teacher <= alone:
        return (
            f"on {split} the label-only student ({alone:.4f}) is not behind the teacher ({teacher:.4f}): there was "
            f"no gap to recover, and the distilled student scored {distilled:.4f}"
        )
    return (
        f"on {split} the distilled student recovered {(distilled - alone) / (teacher - alone):.0%} of the gap "
        f"between the label-only student ({alone:.4f}) and the teacher ({teacher:.4f})"
    )


def distillation_section(metrics: dict, distilled: dict, latency: dict) -> list[str]:
    if not distilled["enabled"]:
        return []
    teacher, student = distilled["teacher"], distilled["student"]
    students = distilled["students"]
    rows = [("teacher (fine-tuned)", "finetune", teacher["backbone"], teacher, latency.get("teacher_ms"))]
    rows += [
        (
            f"{name.replace('_', '-')} student",
            name,
            student["backbone"],
            students[name],
            latency.get("student_ms"),
        )
        for name in students
    ]
    lines = [
        "## Distillation",
        "",
        f"Teacher `{teacher['backbone']}` ({teacher['input_size']} px), student `{student['backbone']}` "
        f"({student['input_size']} px). Single-image latency: median of {latency['runs']} forward passes on this "
        f"machine's CPU ({latency['threads']} threads), a measurement that varies between runs.",
        "",
        "| model | backbone | test accuracy [95% interval] | macro-F1 | parameters | file size | CPU latency |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, key, backbone, record, ms in rows:
        test = metrics[key]["test"]
        lines.append(
            f"| {title} | `{backbone}` | {_value('accuracy', test)} | {test['macro_f1']:.4f} "
            f"| {record['parameters'] / 1e6:.2f} M | {record['megabytes']:.1f} MB | {ms:.1f} ms |"
        )
    distilled_run = students["distilled"]
    used, dropped = distilled_run["unlabeled_images"], distilled["unlabeled"]["dropped"]
    reasons = Counter(d["reason"] for d in dropped)
    lines += [
        "",
        f"The student is {latency['student_speedup']:.2f}x as fast as the teacher on one image. "
        f"It trained on {distilled_run['labelled_images']} labelled and {used} unlabelled images"
        + (
            f" ({len(dropped)} unlabelled files dropped: {', '.join(f'{k}: {v}' for k, v in reasons.items())}; "
            "listed in `distill.json`)"
            if dropped
            else ""
        )
        + f", best validation epoch {distilled_run['best_epoch']} of {distilled_run['epochs_run']}.",
    ]
    if "label_only" in students:
        lines += [
            "",
            "The label-only student is the same network with the same budget on the labels alone: "
            + gap_recovered(metrics, "val")
            + "; "
            + gap_recovered(metrics, "test")
            + ".",
        ]
    return lines + [""]


METHOD_NAMES = {"adabn": "AdaBN", "coral": "CORAL", "finetune": "target-aware fine-tuning"}


def adaptation_section(adapted: dict) -> list[str]:
    if adapted["method"] == "none":
        return []
    target = adapted["target"]
    reasons = Counter(d["reason"] for d in target["dropped"])
    labelled = target["test_images"] > 0
    lines = [
        "## Domain adaptation",
        "",
        f"Method: {METHOD_NAMES[adapted['method']]}, from {target['unlabeled_images']} unlabelled target images "
        f"in `{target['folder']}`"
        + (
            f" ({len(target['dropped'])} files dropped: {', '.join(f'{k}: {v}' for k, v in reasons.items())}; "
            "listed in `adapt.json`)"
            if target["dropped"]
            else ""
        )
        + (
            f"; measured on {target['test_images']} labelled target test images, never used to train or choose."
            if labelled
            else ". **There are no target labels (`test/<class>/<image>` in the target folder), so whether "
            "adaptation helped cannot be verified**: below are only what can be measured without them."
        ),
        "",
        "| model | "
        + ("target test accuracy [95% interval] | target macro-F1 | " if labelled else "")
        + "source test accuracy | domain classifier accuracy (0.5: domains indistinguishable) |",
        "|---|" + ("---|---|" if labelled else "") + "---|---|",
    ]
    for model, variants in adapted["models"].items():
        for variant, record in variants.items():
            title = f"{'head' if model == 'head' else 'fine-tuned'}, {variant.replace('_', '-')}"
            domain = record["domain_accuracy"]
            cells = [title]
            if labelled:
                cells += [
                    _value("accuracy", record["target_test"]),
                    f"{record['target_test']['macro_f1']:.4f}",
                ]
            cells += [f"{record['source_test']['accuracy']:.4f}", "–" if domain is None else f"{domain:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Predicted classes on the unlabelled target images (share of images):", ""]
    for model, variants in adapted["models"].items():
        for variant, record in variants.items():
            shares = ", ".join(f"{k} {v:.2f}" for k, v in record["predicted_on_target"].items())
            lines.append(
                f"- {'head' if model == 'head' else 'fine-tuned'}, {variant.replace('_', '-')}: {shares}"
            )
    return lines + ["", "Per-class F1 on the target test set: `adapt.json`." if labelled else "", ""]


def params_as_run(params: Params) -> list[str]:
    """The recipe's keys as they ran: the value, and for an `auto` the rule that chose it
    (reprotune/resolve.py). Only keys evaluate declares, so that the table is never stale."""
    values = {
        "backbone.name": params.backbone.name,
        "backbone.weights": params.backbone.weights,
        "backbone.input_size": params.backbone.input_size,
        "backbone.channels_last": params.backbone.channels_last,
        "train_head.C": params.train_head.C,
        "finetune.strategy": params.finetune.strategy,
        "finetune.epochs": params.finetune.epochs,
        "finetune.lr": params.finetune.lr,
        "finetune.backbone_lr_factor": params.finetune.backbone_lr_factor,
        "finetune.warmup_epochs": params.finetune.warmup_epochs,
        "finetune.batch_size": params.finetune.batch_size,
        "finetune.augment.hflip": params.finetune.augment.hflip,
        "clean.near_duplicate_distance": params.clean.near_duplicate_distance,
    }
    decided = decisions(params)
    lines = ["## Params as run", "", "| key | value | from |", "|---|---|---|"]
    for key, value in values.items():
        choice = decided.get(key)
        if choice is not None and not choice.used:
            continue  # does not apply to these data (and params.yaml leaves it auto)
        source = f"auto: {choice.why}" if choice is not None and choice.written == "auto" else "params.yaml"
        shown = "the backbone's own" if key == "backbone.input_size" and value is None else f"`{value}`"
        lines.append(f"| `{key}` | {shown} | {source} |")
    return lines + ["", "Every key as run: the MLflow run's params.", ""]


def render(
    params: Params,
    metrics: dict,
    per_class: dict,
    cleaning: dict,
    splits: dict,
    features: dict,
    finetuned: dict,
    baseline: dict,
    curve: dict,
    issues: pd.DataFrame,
    distilled: dict,
    latency: dict,
    adapted: dict,
    kind: DataKind,
    mistakes: dict,
    shown_as: str,
) -> str:
    """The report on data of `kind`; `mistakes` each transfer model's most confident mistakes, each item as
    the split manifest's column `shown_as` shows it."""
    text = kind.modality == TEXT
    source = (
        "the built-in text sample (Banking77)"
        if kind.sample and text
        else "the built-in sample (scikit-learn digits)"
        if kind.sample
        else f"`{params.paths.raw}`"
    )
    settings = params.finetune
    kinds = Counter(group["kind"] for group in cleaning["duplicate_groups"])
    items = "texts" if text else "images"
    duplicates = (
        f"- Duplicate groups, each kept inside one split{straddling(splits)}: {kinds['exact']} of identical texts, "
        f"{kinds['near']} of texts equal after normalising case, whitespace and punctuation (of exact copies "
        f"under one label only the first is kept). Such pairs across splits: "
        f"{splits['leakage']['near_duplicate_pairs_across_splits']} (listed in `split.json`)."
        if text
        else f"- Duplicate groups, each kept inside one split{straddling(splits)}: {kinds['exact']} of identical images, "
        f"{kinds['near']} of "
        f"near-identical ones (resized, recompressed, cropped or framed copies: hashes within "
        f"{params.clean.near_duplicate_distance} bits of 256). Near-duplicate pairs across splits: "
        f"{splits['leakage']['near_duplicate_pairs_across_splits']}; similar pairs across splits (within "
        f"{splits['leakage']['checked_distance']} bits, not grouped; listed in `split.json`): "
        f"{splits['leakage']['similar_pairs_across_splits']}."
    )
    preprocessing = (
        f"- Tokenizer `{features['text_config']['tokenizer']}` of the encoder, at most "
        f"{features['text_config']['max_length']} tokens per text; pooling and normalisation from the encoder's "
        "own configuration."
        if text
        else f"- Input {features['data_config']['input_size']} px, {features['data_config']['interpolation']} "
        f"resize, mean {list(features['data_config']['mean'])}, std {list(features['data_config']['std'])}."
    )
    lines = [
        "# reprotune run report",
        "",
        "## Data",
        "",
        f"- Scanned {cleaning['scanned']} {'rows' if text else 'files'} from {source}: kept "
        f"{cleaning['kept']}, dropped {cleaning['dropped']}"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in cleaning['dropped_by_reason'].items())})."
            if cleaning["dropped"]
            else "."
        ),
        duplicates,
        f"- Splits: {split_origin(splits, items)}",
        f"- {len(features['classes'])} classes. {items.capitalize()} per split: "
        + ", ".join(f"{split} {sum(counts.values())}" for split, counts in splits["counts"].items())
        + ". Details: `cleaning.md`, `cleaning.json`, `split.json`.",
        "",
        "## Model",
        "",
        f"- Backbone `{features['backbone']}`, weights: {features['weights']}.",
        preprocessing,
        f"- Baseline (no transfer): {describe_baseline(baseline)}.",
        f"- Head-only: logistic regression on frozen embeddings, C = {params.train_head.C}.",
        f"- Fine-tuned: strategy `{settings.strategy}`"
        + (f" (last {settings.unfreeze_last_n} layer groups)" if settings.strategy == "last_n" else "")
        + f", {finetuned['epochs_run']} of {settings.epochs} epochs on {finetuned['device']}, lr {settings.lr}"
        f" (backbone x{settings.backbone_lr_factor}), batch {settings.batch_size}; best validation epoch "
        f"{finetuned['best_epoch']} (0 = the probe's head unchanged).",
        "",
        *params_as_run(params),
        "## Metrics",
        "",
        f"Accuracy is followed by its 95% bootstrap interval [`accuracy_ci_low`, `accuracy_ci_high`] "
        f"({params.evaluate.bootstrap_resamples} resamples of the {items}). `ece` is the "
        f"expected calibration error over {params.evaluate.calibration_bins} bins"
        + (
            "; `ece_temperature_scaled` uses a temperature fitted on val."
            if params.evaluate.temperature_scaling
            else "."
        ),
        "",
        *metrics_table(metrics),
        "",
        "## Does transfer help?",
        "",
        f"Test accuracy: baseline {metrics['baseline']['test']['accuracy']:.4f}, head "
        f"{metrics['head']['test']['accuracy']:.4f}, fine-tuned {metrics['finetune']['test']['accuracy']:.4f}. "
        + transfer_verdict(metrics)
        + (
            f" With no labelled example at all, zero-shot (the nearest class name by cosine) scores "
            f"{metrics['zeroshot']['test']['accuracy']:.4f}."
            if "zeroshot" in metrics
            else ""
        ),
        "",
        "## Would more labels help?",
        "",
        curve["sentence"]
        + f" ({curve['draws']} random draws per point; every point in `learning_curve.json`.)",
        "",
        "![learning curve](learning_curve.png)",
        "",
        "## Which labels are probably wrong?",
        "",
        *issues_section(
            issues, sum(sum(c.values()) for c in splits["counts"].values()), params.paths.relabel
        ),
        *distillation_section(metrics, distilled, latency),
        *adaptation_section(adapted),
        "## Per class (test)",
        "",
        "| class | support | baseline F1 | head F1 | fine-tuned F1 | fine-tuned precision | fine-tuned recall |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {row['support']} | {per_class['baseline']['classes'][name]['f1']:.3f} "
            f"| {per_class['head']['classes'][name]['f1']:.3f} | {row['f1']:.3f} "
            f"| {row['precision']:.3f} | {row['recall']:.3f} |"
            for name, row in per_class["finetune"]["classes"].items()
        ],
        "",
        *mistakes_section(mistakes, shown_as),
        "## Exported models",
        "",
        (
            "Text models are not exported to ONNX (`export.md` says so); `python -m reprotune.predict --model "
            "models/finetuned` labels new texts with the fine-tuned network."
            if text
            else "The fine-tuned network as ONNX (float32 and int8) against torch on the test split: accuracy "
            "with its interval, macro-F1, agreement, size, in [`export.md`](export.md), which the export stage "
            "writes after this report."
        ),
        "",
        "## Plots",
        "",
    ]
    for title, files in PLOTS:
        lines += [f"### {title}", "", *[f"![{name}](plots/{name})" for name in files], ""]
    return "\n".join(lines)
