import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from reprotune.modalities.showing import of
from reprotune.pipeline import params as params_module
from reprotune.pipeline.data_kind import IMAGE, TEXT, DataKind
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.resolve import resolve
from reprotune.reporting import evaluation_plots as plots
from reprotune.reporting.metrics import (
    bootstrap_interval,
    bootstrap_intervals,
    class_recall,
    expected_calibration_error,
    fit_temperature,
    per_class_metrics,
    reliability,
    summary_metrics,
)
from reprotune.reporting.report import DATA, MODEL, SECTIONS, render
from stages.evaluate import most_confident_mistakes, predictions_frame
from tests.conftest import noisy_image, tiny_params_raw


def confident_logits(predicted: np.ndarray, classes: int, margin: float = 20.0) -> np.ndarray:
    logits = np.zeros((len(predicted), classes))
    logits[np.arange(len(predicted)), predicted] = margin
    return logits


def summary(labels, predicted, classes=3, top_k=2):
    return summary_metrics(confident_logits(predicted, classes), labels, classes, top_k, 10, 200, 0)


def test_perfect_and_worst_classifiers():
    labels = np.array([0, 0, 1, 1, 2, 2])
    perfect = summary(labels, labels)
    assert perfect["accuracy"] == perfect["balanced_accuracy"] == perfect["macro_f1"] == 1.0
    assert perfect["accuracy_ci_low"] == perfect["accuracy_ci_high"] == 1.0
    assert perfect["log_loss"] < 1e-6 and perfect["ece"] < 1e-6 and perfect["top_2_accuracy"] == 1.0
    worst = summary(labels, (labels + 1) % 3)
    assert worst["accuracy"] == worst["macro_f1"] == 0.0
    assert worst["ece"] == pytest.approx(1.0, abs=1e-6)  # fully confident, always wrong
    assert worst["log_loss"] > 10


def test_hand_computed_with_a_class_never_predicted():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    result = summary(labels, predicted)
    assert result["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-6)
    # a: p=1, r=2/3, f1=0.8; b: p=2/4, r=1, f1=2/3; c: never predicted, f1=0
    assert result["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3, abs=1e-6)
    assert result["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 2 / 3) / 6, abs=1e-6)
    per_class = per_class_metrics(labels, predicted, ["a", "b", "c"])
    assert per_class["classes"]["a"]["f1"] == pytest.approx(0.8, abs=1e-6)
    assert per_class["classes"]["b"]["precision"] == pytest.approx(0.5, abs=1e-6)
    assert per_class["classes"]["c"] | {"recall_ci_high": None} == {
        "precision": 0.0,
        "recall": 0.0,
        "recall_ci_low": 0.0,
        "recall_ci_high": None,
        "f1": 0.0,
        "support": 1,
    }
    assert per_class["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]


def test_two_classes_leave_out_top_k():
    labels = np.array([0, 1, 1, 0])
    result = summary(labels, np.array([0, 1, 0, 0]), classes=2, top_k=2)
    assert "top_2_accuracy" not in result and result["accuracy"] == 0.75


def test_bootstrap_interval_brackets_accuracy_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.8
    large = rng.random(5000) < 0.8
    low, high = bootstrap_interval(small.astype(int), np.ones(50, int), 1000, 0)
    assert low <= small.mean() <= high
    big_low, big_high = bootstrap_interval(large.astype(int), np.ones(5000, int), 1000, 0)
    assert big_high - big_low < (high - low) / 4
    assert bootstrap_interval(small.astype(int), np.ones(50, int), 1000, 0) == (low, high)  # seeded


@pytest.mark.parametrize("seed", range(5))
def test_each_bootstrap_resample_scores_as_scikit_learn_does(seed):
    """One resample's interval is that resample's value: the tallies over all resamples at once must give
    scikit-learn's balanced accuracy and macro-F1 (a class absent from the resample included, as 0)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(seed + 10)
    labels = rng.integers(0, 4, 40)
    predicted = np.where(rng.random(40) < 0.6, labels, rng.integers(0, 5, 40))
    draw = np.random.default_rng(seed).integers(0, 40, size=(1, 40))[0]
    found = bootstrap_intervals(labels, predicted, 6, 1, seed)
    y, p = labels[draw], predicted[draw]
    assert found["accuracy"][0] == pytest.approx(np.mean(y == p))
    assert found["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(y, p))
    expected_f1 = f1_score(y, p, labels=list(range(6)), average="macro", zero_division=0)
    assert found["macro_f1"][0] == pytest.approx(expected_f1)


def test_class_recall_gives_a_rare_class_an_honest_interval():
    labels = np.array([0] * 100 + [1] * 3)
    predicted = np.array([0] * 100 + [1] * 3)
    rows = class_recall(labels, predicted, 3)
    assert rows[1]["recall"] == 1.0 and rows[1]["low"] < 0.5  # 3 of 3: Wilson [0.44, 1], not [1, 1]
    assert rows[0]["low"] > 0.95
    assert rows[2] == {"items": 0, "found": 0, "recall": None, "low": None, "high": None}


def test_calibration_error_by_hand():
    # Two bins of 10: confidences 0.95 (all right) and 0.65 (half right).
    probabilities = np.array([[0.95, 0.05]] * 2 + [[0.65, 0.35]] * 2)
    labels = np.array([0, 0, 0, 1])
    table = reliability(probabilities, labels, 10)
    assert table["count"][9] == 2 and table["count"][6] == 2
    assert expected_calibration_error(probabilities, labels, 10) == pytest.approx((0.05 * 2 + 0.15 * 2) / 4)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits, axis=1)])
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3, rel=0.1)


@pytest.mark.parametrize("num_classes", [2, 30])
def test_every_plot_and_the_report_are_produced(tmp_path: Path, tiny_params, num_classes):
    rng = np.random.default_rng(num_classes)
    classes = [f"class_{i:02d}" for i in range(num_classes)]
    labels = np.repeat(np.arange(num_classes), 4)
    paths = []
    for n in range(len(labels)):
        noisy_image((n % 255, 80, 160), n).save(tmp_path / f"{n}.png")
        paths.append(str(tmp_path / f"{n}.png"))
    probabilities = {
        m: softmax(rng.normal(0, 2, (len(labels), num_classes)), axis=1)
        for m in ("baseline", "head", "finetune")
    }
    per_class = {m: per_class_metrics(labels, p.argmax(1), classes) for m, p in probabilities.items()}
    frame = predictions_frame(paths, labels, probabilities, classes)
    assert list(frame.columns[:8]) == [
        "path",
        "actual",
        "baseline",
        "baseline_confidence",
        "head",
        "head_confidence",
        "finetune",
        "finetune_confidence",
    ]
    assert len(frame.columns) == 8 + 3 * num_classes
    mistakes = most_confident_mistakes(frame, "finetune", 5)
    assert [m[3] for m in mistakes] == sorted((m[3] for m in mistakes), reverse=True)

    out = tmp_path / "plots"
    for model in ("head", "finetune"):
        plots.confusion(
            np.array(per_class[model]["confusion_matrix"]), classes, model, out / f"confusion_{model}.png"
        )
        plots.precision_recall(labels, probabilities[model], classes, model, out / f"pr_{model}.png")
        of(IMAGE).figure(
            plots.mistake_captions(most_confident_mistakes(frame, model, 12)),
            [255, 255, 255],
            model,
            out / f"mistakes_{model}.png",
        )
    plots.reliability_diagram(
        {m: reliability(p, labels, 15) for m, p in probabilities.items()},
        {"baseline": 0.3, "head": 0.1, "finetune": 0.2},
        out / "reliability.png",
    )
    plots.per_class_f1(
        classes,
        {m: [per_class[m]["classes"][c]["f1"] for c in classes] for m in per_class},
        out / "per_class_f1.png",
    )
    plots.training_curves(
        [
            {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 10, "lr": 0.1}
            for e in (1, 2, 3)
        ],
        out / "training_curves.png",
    )
    produced = sorted(p.name for p in out.iterdir())
    assert len(produced) == 9 and all((out / name).stat().st_size > 5000 for name in produced)

    metrics = {
        m: {
            s: summary_metrics(np.log(probabilities[m]), labels, num_classes, 3, 15, 200, 0)
            for s in ("val", "test")
        }
        for m in ("baseline", "head", "finetune")
    }
    sections = {stage: f"- {stage} says this." for stage in SECTIONS} | {
        "learning_curve": "## Would more labels help?\n\nFrom 4 labelled images per class.\n\n",
        "adapt": "",  # adapt.method none: its section is empty, and so is its place
    }
    mistakes = {"head": [], "finetune": [(paths[1], classes[0], classes[1], 0.9)]}
    arguments = (tiny_params, metrics, per_class, sections, {"enabled": False}, {})
    identity = {
        "data": "0123456789abcdef",
        "device": "cpu",
        "versions": "reprotune 0.1.0, torch 2.14.1, timm 1.0",
    }
    counts = {split: {name: 20 for name in classes} for split in ("train", "val", "test")}
    text = render(*arguments, DataKind(IMAGE, sample=False), mistakes, "path", identity, counts)
    assert "## Classes" not in text  # balanced, and every class measured
    assert text.splitlines()[2].startswith("Data `0123456789abcdef` (the split manifest's sha256")
    assert "evaluated on cpu · reprotune 0.1.0, torch 2.14.1, timm 1.0" in text.split("## Data")[0]
    data = text.split("## Data")[1].split("## Model")[0]
    model = text.split("## Model")[1].split("## Params as run")[0]
    assert all(f"- {stage} says this." in data for stage in DATA)
    assert all(f"- {stage} says this." in model for stage in MODEL)
    assert "## Distillation" not in text and "## Domain adaptation" not in text  # both are off
    assert "\n\n\n" not in text  # an empty section leaves no gap
    findings = text.split("## Does transfer help?")[1]
    assert findings.index("## Would more labels help?") < findings.index("- label_issues says this.")
    keys = {k for m in metrics.values() for split in m.values() for k in split if "_ci_" not in k}
    assert all(f"`{k}`" in text for k in keys), keys
    assert "[" in text.split("`accuracy`")[1].splitlines()[0]  # the interval is shown beside accuracy
    for name in produced:
        assert f"plots/{name}" in text
    assert json.dumps(metrics)  # plain JSON types only
    verdict = text.split("## Does transfer help?")[1].split("##")[0]
    gap = (metrics["finetune"]["test"]["accuracy"] - metrics["baseline"]["test"]["accuracy"]) * 100
    assert f"The fine-tuned network is {abs(gap):.1f} points {'above' if gap > 0 else 'below'}" in verdict
    assert f"| {paths[1]} | {classes[0]} | {classes[1]} | 90% |" in text  # the mistakes, each by its path
    assert "in [`export.md`](export.md)" in text
    assert f"| `finetune.lr` | `{tiny_params.finetune.lr}` | params.yaml |" in text  # the params as run
    on_texts = render(*arguments, DataKind(TEXT, sample=False), mistakes, "text", identity, counts)
    assert "in [`export.md`](export.md)" in on_texts and "resamples of the texts" in on_texts
    # on the sample, with the shipped params: each auto key says what it became and why
    shipped = params_module.validate(tiny_params_raw(tmp_path, images=False))
    on_sample = render(
        resolve(shipped, DataKind(IMAGE, sample=True)),
        *arguments[1:],
        DataKind(IMAGE, True),
        mistakes,
        "path",
        identity,
        counts,
    )
    assert "| `finetune.augment.hflip` | `0.0` | auto: photos: 0.5; 0 on the sample" in on_sample
    assert "| `backbone.input_size` | `32` | params.yaml |" in on_sample  # tiny params set it


def test_imbalanced_classes_lead_the_report_with_each_class_recall(tiny_params):
    """A long tail: the report opens with the classes' test recall, rarest first, each with its interval,
    the head's and the fine-tune's macro-F1 and balanced accuracy with theirs, and the classes too small to
    measure; on balanced classes, only those too small to measure (if any) are named."""
    classes = ["common", "rare", "tiny"]
    labels = np.array([0] * 40 + [1] * 8 + [2] * 3)
    predicted = np.array([0] * 40 + [1] * 6 + [0] * 2 + [2, 0, 0])
    logits = np.log(np.eye(3)[predicted] * 0.9 + 0.05)
    metrics = {
        m: {s: summary_metrics(logits, labels, 3, 3, 15, 200, 0) for s in ("val", "test")}
        for m in ("baseline", "head", "finetune")
    }
    per_class = {m: per_class_metrics(labels, predicted, classes) for m in metrics}
    counts = {
        "train": {"common": 400, "rare": 40, "tiny": 12},
        "val": {"common": 40, "rare": 8, "tiny": 3},
        "test": {"common": 40, "rare": 8, "tiny": 3},
    }
    sections = {stage: "" for stage in SECTIONS}
    identity = {"data": "0" * 16, "device": "cpu", "versions": "v"}
    arguments = (tiny_params, metrics, per_class, sections, {"enabled": False}, {}, DataKind(IMAGE, False))
    text = render(*arguments, {"head": [], "finetune": []}, "path", identity, counts)
    section = text.split("## Classes of unequal size")[1].split("## Data")[0]
    assert text.index("## Classes of unequal size") < text.index("## Data")
    assert "from 12 to 400 items (33.3x)" in section
    assert f"`{tiny_params.finetune.selection_metric}` on val" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| tiny", "| rare", "| common"]
    assert "| 0.333 [0.061, 0.792] |" in rows[0]  # 1 of 3 found, Wilson interval
    assert "Too few val or test items to be measured (under 5): tiny (val 3, test 3)" in section
    m = metrics["finetune"]["test"]
    assert f"{m['macro_f1']:.4f} [{m['macro_f1_ci_low']:.4f}, {m['macro_f1_ci_high']:.4f}]" in section

    given_splits = counts | {"train": {"common": 400, "rare": 40, "tiny": 0}}  # `tiny` only in val and test
    assert "from 0 to 400 items (a class has no training item)" in render(
        *arguments, {"head": [], "finetune": []}, "path", identity, given_splits
    )
    balanced = {"train": {"common": 40, "rare": 30, "tiny": 25}} | {
        s: {"common": 9, "rare": 9, "tiny": 3} for s in ("val", "test")
    }
    on_balanced = render(*arguments, {"head": [], "finetune": []}, "path", identity, balanced)
    assert "## Classes of unequal size" not in on_balanced
    assert "tiny (val 3, test 3)" in on_balanced.split("## Classes too small to measure")[1]


def test_each_stage_writes_its_own_section_of_the_report(tmp_path: Path):
    """The words each owner puts in report.md, from its own record (reprotune/reporting/report.py only places them)."""
    from reprotune.modalities import baselines
    from reprotune.modalities import cleaning as modality_cleaning
    from stages import clean, label_issues, split

    images = modality_cleaning.of(IMAGE)
    cleaning = {
        "scanned": 10,
        "kept": 9,
        "dropped": 1,
        "dropped_by_reason": {"too_small": 1},
        "duplicate_groups": [{"kind": "exact"}, {"kind": "near"}, {"kind": "near"}],
    }
    params = params_module.validate(tiny_params_raw())
    rules, layout = params.clean, Layout(params.paths)
    written = "\n".join(clean.section(cleaning, False, layout, images, rules))
    assert "- Scanned 10 files from `data/raw`: kept 9, dropped 1 (too_small: 1)." in written
    assert "holds no files" not in written
    sample = "\n".join(clean.section(cleaning, True, layout, images, rules))
    assert "- Scanned 10 files from the built-in sample (scikit-learn digits)" in sample
    assert "- **The built-in sample (scikit-learn digits) ran because `data/raw` holds no files**" in sample
    assert (
        f"1 of identical images, 2 of near-identical ones (resized, recompressed, cropped or framed copies: hashes within {rules.near_duplicate_distance} bits"
        in written
    )
    splits = {
        "counts": {"train": {"a": 5, "b": 2}, "val": {"a": 2}, "test": {"a": 2}},
        "given": ["train", "val"],
        "carved": {"test": {"from": "train/", "fraction": 0.15, "images": 2}},
        "groups_straddling_given_splits": [["x", "y"]],
        "leakage": {
            "near_duplicate_pairs_across_splits": 0,
            "similar_pairs_across_splits": 3,
            "checked_distance": 48,
        },
    }
    written = "\n".join(split.section(splits, images))
    assert "given as train/, val/; test carved from train/ (15% of each class, 2 images)." in written
    assert "similar pairs across splits (within 48 bits, not grouped; listed in `split.json`): 3." in written
    assert (
        "that given split folders put apart: 1." in written
        and "- 2 classes. Images per split: train 7" in written
    )
    assert "Duplicate pairs across splits: 0" in "\n".join(split.section(splits, modality_cleaning.of(TEXT)))
    found = {
        "chosen": {"model": "rbf_svm", "C": 10.0, "gamma": 1.0},
        "image_size": 32,
        "features": 3072,
        "candidates": [{}] * 16,
        "training_images_used": 2000,
        "training_images": 7000,
    }
    described = baselines.of(IMAGE).describe(found)
    assert "an RBF SVM (C = 10, gamma = 1 / 3072 features) on the raw pixels (32x32" in described
    assert "trained on a stratified 2000 of the 7000 training images" in described
    issues = pd.DataFrame(
        {
            "rank": ["1"],
            "path": ["data/raw/a/1.png"],
            "split": ["train"],
            "given_label": ["a"],
            "suggested_label": ["b"],
            "score": ["0.01"],
        }
    )
    written = "\n".join(label_issues.section(issues, 9, "images", "path", "data/relabel.csv"))
    assert "flags 1 of 9 kept images (train 1)" in written and "| 1 | `data/raw/a/1.png` | train |" in written
    issues["text"] = ["my card | is lost"]
    written = "\n".join(label_issues.section(issues, 9, "texts", "text", "data/relabel.csv"))
    assert "| 1 | `data/raw/a/1.png`: my card \\| is lost | train |" in written
