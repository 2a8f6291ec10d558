"""reports/report.md: one page that explains a run to someone who never opens MLflow."""

from __future__ import annotations

from collections import Counter

from reprotune.pipeline.data_kind import DataKind
from reprotune.pipeline.params import Params
from reprotune.pipeline.resolve import decisions
from reprotune.reporting.markdown import value_cell

# The stages that write a section of report.md (reports/sections/<stage>.md), by where it goes: bullets under
# "Data" and "Model", or a section with its own heading after "Does transfer help?". A stage with something
# to report writes its file, declares it in dvc.yaml (and as evaluate's dependency) and is named here once.
DATA = ("clean", "split", "leakage")
MODEL = ("featurize", "baseline", "train_head", "finetune")
FINDINGS = ("learning_curve", "label_issues", "adapt")
SECTIONS = (*DATA, *MODEL, *FINDINGS)

PLOTS = [
    ("Confusion matrices", ["confusion_head.png", "confusion_finetune.png"]),
    ("Per-class F1 (baseline, head-only, fine-tuned)", ["per_class_f1.png"]),
    ("Precision-recall (one vs rest)", ["pr_head.png", "pr_finetune.png"]),
    ("Calibration", ["reliability.png"]),
    ("Fine-tuning curves", ["training_curves.png"]),
    ("Most confident mistakes", ["mistakes_head.png", "mistakes_finetune.png"]),
]


def metrics_table(metrics: dict) -> list[str]:
    columns = [(model, split) for model in metrics for split in metrics[model]]
    keys = list(dict.fromkeys(k for model, split in columns for k in metrics[model][split]))
    keys = [k for k in keys if not k.endswith(("_ci_low", "_ci_high"))]
    lines = [
        "| metric | " + " | ".join(f"{model} {split}" for model, split in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key in keys:
        cells = [value_cell(key, metrics[model][split]) for model, split in columns]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


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


# Classes whose largest training count is at least this multiple of the smallest are imbalanced: the report
# leads with each class's recall, because accuracy and the mean metrics hide a class the model gives up on.
IMBALANCED_RATIO = 2.0
# A class with fewer val or test items than this is not measured: one item moves its test recall by 20
# points or more (4 of 4 found: Wilson interval [0.51, 1]), and the val score that picks the model barely
# sees it.
MIN_MEASURED = 5


def unmeasured(counts: dict[str, dict[str, int]]) -> list[str]:
    """Classes with too few val or test items to be measured, each with its counts."""
    return [
        f"{name} (val {counts['val'].get(name, 0)}, test {counts['test'].get(name, 0)})"
        for name in counts["train"]
        if min(counts["val"].get(name, 0), counts["test"].get(name, 0)) < MIN_MEASURED
    ]


def class_balance_section(params: Params, metrics: dict, per_class: dict, counts: dict) -> list[str]:
    """When training classes are imbalanced: each class's test recall with its interval, rarest first, and
    the means that weigh every class the same. Else only the classes too small to be measured, if any.
    `counts`: split -> class -> items."""
    train = counts["train"]
    few = unmeasured(counts)
    warning = (
        [
            f"Too few val or test items to be measured (under {MIN_MEASURED}): {', '.join(few)}. Their recall "
            "moves by 20 points or more per item, and the val score that picks the model barely sees them: "
            "add items, or raise split.val_fraction and split.test_fraction.",
            "",
        ]
        if few
        else []
    )
    smallest, largest = min(train.values()), max(train.values())
    if largest < IMBALANCED_RATIO * smallest:
        return ["## Classes too small to measure", "", *warning] if few else []

    def recall(model: str, name: str) -> str:
        row = per_class[model]["classes"][name]
        if row["recall_ci_low"] is None:
            return "–"
        return f"{row['recall']:.3f} [{row['recall_ci_low']:.3f}, {row['recall_ci_high']:.3f}]"

    head, tuned = metrics["head"]["test"], metrics["finetune"]["test"]
    mean = lambda m, key: f"{m[key]:.4f} [{m[f'{key}_ci_low']:.4f}, {m[f'{key}_ci_high']:.4f}]"  # noqa: E731
    return [
        "## Classes of unequal size",
        "",
        f"Training classes range from {smallest} to {largest} items"
        + (f" ({largest / smallest:.1f}x). " if smallest else " (a class has no training item). ")
        + "The head "
        f"weighs classes `{params.train_head.class_weights}`, the fine-tune `{params.finetune.class_weights}`; "
        f"its best epoch is chosen by `{params.finetune.selection_metric}` on val. On test, macro-F1: head "
        f"{mean(head, 'macro_f1')}, fine-tuned {mean(tuned, 'macro_f1')}; balanced accuracy (mean recall): "
        f"head {mean(head, 'balanced_accuracy')}, fine-tuned {mean(tuned, 'balanced_accuracy')}.",
        "",
        *warning,
        "Recall on test with its 95% interval (Wilson), rarest class first:",
        "",
        "| class | train | val | test | head recall | fine-tuned recall |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {train[name]} | {counts['val'].get(name, 0)} | {counts['test'].get(name, 0)} "
            f"| {recall('head', name)} | {recall('finetune', name)} |"
            for name in sorted(train, key=lambda n: (train[n], n))
        ],
        "",
    ]


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
            f"| {title} | `{backbone}` | {value_cell('accuracy', test)} | {test['macro_f1']:.4f} "
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


def params_as_run(params: Params) -> list[str]:
    """The recipe's keys as they ran: the value, and for an `auto` the rule that chose it
    (reprotune/pipeline/resolve.py). Only keys evaluate declares, so that the table is never stale."""
    values = {
        "backbone.name": params.backbone.name,
        "backbone.weights": params.backbone.weights,
        "backbone.input_size": params.backbone.input_size,
        "backbone.channels_last": params.backbone.channels_last,
        "train_head.C": params.train_head.C,
        "train_head.class_weights": params.train_head.class_weights,
        "finetune.class_weights": params.finetune.class_weights,
        "finetune.selection_metric": params.finetune.selection_metric,
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
    sections: dict[str, str],
    distilled: dict,
    latency: dict,
    kind: DataKind,
    mistakes: dict,
    shown_as: str,
    identity: dict[str, str],
    counts: dict[str, dict[str, int]],
) -> str:
    """report.md: the stages' own sections (`sections`: stage -> the text of its section file, SECTIONS' stages)
    in their places, around evaluate's. `mistakes`: each transfer model's most confident mistakes, each item
    as the split manifest's column `shown_as` shows it; `identity`: the data's hash, the device and the versions;
    `counts`: split -> class -> items (the class balance section leads when training classes are imbalanced)."""
    settings = params.evaluate
    lines = [
        "# reprotune run report",
        "",
        f"Data `{identity['data']}` (the split manifest's sha256: every file, label and split) · evaluated on "
        f"{identity['device']} · {identity['versions']}. The commit and the date are the MLflow run's "
        "(`reports/mlflow_run.json` names it; `reprotune compare` lists it).",
        "",
        *class_balance_section(params, metrics, per_class, counts),
        "## Data",
        "",
        *[sections[stage].rstrip("\n") for stage in DATA],
        "",
        "## Model",
        "",
        *[sections[stage].rstrip("\n") for stage in MODEL],
        "",
        *params_as_run(params),
        "## Metrics",
        "",
        f"Accuracy, balanced accuracy and macro-F1 are followed by their 95% bootstrap intervals "
        f"(`<metric>_ci_low`, `<metric>_ci_high`; {settings.bootstrap_resamples} resamples of the {kind.items}). "
        "`ece` is the "
        f"expected calibration error over {settings.calibration_bins} bins"
        + (
            "; `ece_temperature_scaled` uses a temperature fitted on val."
            if settings.temperature_scaling
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
        *[part for stage in FINDINGS if sections[stage] for part in (sections[stage].rstrip("\n"), "")],
        *distillation_section(metrics, distilled, latency),
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
        "The fine-tuned network as ONNX (float32 and int8) against torch on the test split: accuracy "
        "with its interval, macro-F1, agreement, size, in [`export.md`](export.md), which the export stage "
        "writes after this report.",
        "",
        "## Plots",
        "",
    ]
    for title, files in PLOTS:
        lines += [f"### {title}", "", *[f"![{name}](plots/{name})" for name in files], ""]
    return "\n".join(lines)
