"""learning_curve: would more labels help? The head (the same probe as train_head, reprotune/models/probe.py) trained
on k labelled images per class, k = 1, 2, 4, ... and on all of them, scored on val and test.

Each k below the median class's training count gets `learning_curve.draws` seeded random draws of the
images (beyond it, most classes would use every image they have, and the point would be "all" again); a
class with fewer than k training images uses all it has (named per point, and marked in the plot). The mean and its 95% interval over the draws (Student's t) are reported per k; "all" is the one
head train_head fits, so its interval is the point itself. Everything runs on the cached embeddings:
seconds, not a single forward pass.

For texts the curve starts at k = 0: zero-shot classification, each text given the class whose name's
embedding is nearest by cosine (featurize embeds the names), which needs no labelled example at all.

Writes `learning_curve.json` (points and a reading of them), `learning_curve.csv` (for `dvc plots`) and
`learning_curve.png` in reports/.
"""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from scipy import stats

from reprotune.models.probe import accuracy, chosen_C, fit_linear_head
from reprotune.models.zero_shot import zero_shot_logits
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_json, write_text
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.figures import save
from reprotune.reporting.markdown import lines_of

log = logging.getLogger(__name__)

SCORED_SPLITS = ("val", "test")
WITHIN = 0.01  # "as good as all the data": within one accuracy point of it


def label_counts(median_class: float) -> list[int]:
    """1, 2, 4, ... below the median class's count."""
    counts, k = [], 1
    while k < median_class:
        counts.append(k)
        k *= 2
    return counts


def draw_indices(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k images of each class, chosen at random (all of a class that has fewer)."""
    chosen = [
        rng.choice(members, size=min(k, len(members)), replace=False)
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(chosen))


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the mean over draws, clipped to [0, 1]: with five draws the t-interval
    of accuracies near 1 reaches past it."""
    mean = float(np.mean(values))
    if len(values) < 2 or np.std(values) == 0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)  # an accuracy: never beyond [0, 1]


def curve(data: dict, params: Params, num_classes: int, classes: list[str], C: float) -> list[dict]:
    """One point per k, then the point for all training images: each the head fitted with train_head's
    chosen `C`."""
    settings, head = params.learning_curve, params.train_head
    x_train, y_train = data["train"]
    per_class = np.bincount(y_train, minlength=num_classes)
    points = []
    for k in label_counts(float(np.median(per_class))):
        scores: dict[str, list[float]] = {split: [] for split in SCORED_SPLITS}
        for draw in range(settings.draws):
            rng = np.random.default_rng([settings.seed, k, draw])
            chosen = draw_indices(y_train, k, rng)
            weight, bias, _ = fit_linear_head(x_train[chosen], y_train[chosen], head, num_classes, C)
            for split in SCORED_SPLITS:
                scores[split].append(accuracy(weight, bias, *data[split]))
        points.append(point(k, int(np.minimum(per_class, k).sum()), scores, per_class, classes))
    weight, bias, _ = fit_linear_head(x_train, y_train, head, num_classes, C)
    every = {split: [accuracy(weight, bias, *data[split])] for split in SCORED_SPLITS}
    points.append(point(None, len(y_train), every, per_class, classes))
    return points


def point(k: int | None, images: int, scores: dict, per_class: np.ndarray, classes: list[str]) -> dict:
    short = [] if k is None else [classes[c] for c in np.flatnonzero(per_class < k)]
    entry = {
        "labels_per_class": "all" if k is None else k,
        "images": images,
        "mean_labels_per_class": round(images / len(per_class), 2),
        "draws": len(scores["val"]),
        "classes_using_all_they_have": short,
    }
    for split in SCORED_SPLITS:
        mean, low, high = interval(scores[split])
        entry[split] = {"mean": round(mean, 6), "ci_low": round(low, 6), "ci_high": round(high, 6)}
    return entry


def zero_shot_point(layout: Layout, data: dict, num_classes: int, classes: list[str]) -> dict:
    """k = 0: the nearest class name by cosine (text only), scored like the other points."""
    label_embeddings = load_file(layout.label_embeddings)["embeddings"]
    scores = {
        split: [
            float(np.mean(zero_shot_logits(torch.from_numpy(x), label_embeddings).argmax(1).numpy() == y))
        ]
        for split, (x, y) in ((s, data[s]) for s in SCORED_SPLITS)
    }
    return point(0, 0, scores, np.zeros(num_classes), classes)


def reading(points: list[dict]) -> dict:
    """What the test curve says: where it first comes within one point of all the data, and what the last
    step (from the largest k to all the images) gained; and what zero-shot (k = 0) scored, when it ran."""
    zero = [p for p in points if p["labels_per_class"] == 0]
    points = [p for p in points if p["labels_per_class"] != 0]
    every = points[-1]["test"]["mean"]
    enough = next(p for p in points if p["test"]["mean"] >= every - WITHIN)
    result = {
        "all_data_test_accuracy": every,
        "within_one_point_at": enough["labels_per_class"],
        "within_one_point_images": enough["images"],
    }
    if len(points) > 1:
        before = points[-2]
        result |= {
            "last_step_from": before["labels_per_class"],
            "last_step_to_mean_labels_per_class": points[-1]["mean_labels_per_class"],
            "last_step_gain": round(every - before["test"]["mean"], 6),
        }
    if zero:
        result["zero_shot_test_accuracy"] = zero[0]["test"]["mean"]
    return result


def sentence(summary: dict) -> str:
    """The reading in words, for report.md."""
    read = summary["reading"]
    at = read["within_one_point_at"]
    where = (
        "only with all the training images"
        if at == "all"
        else f"from {at} labelled image{'s' if at != 1 else ''} per class ({read['within_one_point_images']} in all)"
    )
    text = (
        f"The head's test accuracy comes within one point of all the data ({read['all_data_test_accuracy']:.4f}) "
        f"{where}."
    )
    if "zero_shot_test_accuracy" in read:
        text += (
            f" With no label at all, zero-shot (the nearest class name by cosine) scores "
            f"{read['zero_shot_test_accuracy']:.4f} on test."
        )
    if "last_step_gain" in read:
        gain = read["last_step_gain"] * 100
        text += (
            f" The last step, from {read['last_step_from']} per class to all of them (on average "
            f"{read['last_step_to_mean_labels_per_class']:g} per class), "
            + (f"gained {gain:.1f} points" if gain > 0 else f"changed it by {gain:+.1f} points")
            + (
                ": more labels would probably still help."
                if gain >= WITHIN * 100
                else ": more labels of the same kind would probably add little."
            )
        )
    return text


def table(points: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "labels_per_class": p["mean_labels_per_class"]
                if p["labels_per_class"] == "all"
                else p["labels_per_class"],
                "point": str(p["labels_per_class"]),
                **{
                    f"{split}_{key}": p[split][key]
                    for split in SCORED_SPLITS
                    for key in ("mean", "ci_low", "ci_high")
                },
            }
            for p in points
        ]
    )


def draw(points: list[dict], path) -> None:
    """Accuracy against labels per class on a log axis, 95% intervals shaded; "all" at the mean per class;
    zero-shot (k = 0, which a log axis cannot place) as dashed lines."""
    zero = [p for p in points if p["labels_per_class"] == 0]
    points = [p for p in points if p["labels_per_class"] != 0]
    frame = table(points)
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for p in zero:
        for split, colour in zip(SCORED_SPLITS, ("tab:orange", "tab:blue"), strict=True):
            ax.axhline(
                p[split]["mean"],
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"{split}, zero-shot (k = 0)",
            )
    for split, colour in zip(SCORED_SPLITS, ("tab:orange", "tab:blue"), strict=True):
        ax.plot(
            frame["labels_per_class"], frame[f"{split}_mean"], "o-", color=colour, label=f"{split} (mean)"
        )
        ax.fill_between(
            frame["labels_per_class"],
            frame[f"{split}_ci_low"],
            frame[f"{split}_ci_high"],
            color=colour,
            alpha=0.2,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(
        frame["labels_per_class"],
        [*frame["point"].iloc[:-1], f"all\n({frame['labels_per_class'].iloc[-1]:g})"],
        fontsize=8,
    )
    ax.minorticks_off()
    capped = [p for p in points if p["classes_using_all_they_have"]]
    if capped:
        first = capped[0]["labels_per_class"]
        ax.axvline(first, color="grey", linestyle=":", linewidth=1)
        ax.text(
            first,
            ax.get_ylim()[0],
            " from here some classes\n use all they have",
            fontsize=7,
            va="bottom",
            color="grey",
        )
    ax.set(
        xlabel="labelled training examples per class (log scale)",
        ylabel="accuracy",
        title=f"learning curve of the head ({points[0]['draws']} draws per point, 95% intervals)",
    )
    ax.legend(fontsize=8, loc="lower right")
    save(figure, path)


def learning_curve(params: Params) -> None:
    layout = Layout(params.paths)
    meta = read_json(layout.features_meta)
    classes = meta["classes"]
    data = {}
    for split in ("train", *SCORED_SPLITS):
        tensors = load_file(layout.features_file(split))
        data[split] = (tensors["embeddings"].numpy(), tensors["labels"].numpy())
    points = curve(data, params, len(classes), classes, chosen_C(layout.head_meta))
    if "label_prompts" in meta:  # featurize embedded the class names: zero-shot is the curve's k = 0
        points.insert(0, zero_shot_point(layout, data, len(classes), classes))
    summary = {"draws": params.learning_curve.draws, "points": points, "reading": reading(points)}
    summary["sentence"] = sentence(summary)
    with atomic_output(layout.learning_curve_table) as temporary:
        table(points).to_csv(temporary, index=False)
    draw(points, layout.learning_curve_plot)
    write_json(layout.learning_curve, summary)
    write_text(
        layout.report_section("learning_curve"),
        lines_of(
            [
                "## Would more labels help?",
                "",
                summary["sentence"]
                + f" ({summary['draws']} random draws per point; every point in `learning_curve.json`.)",
                "",
                f"![learning curve]({layout.learning_curve_plot.name})",
                "",
            ]
        ),
    )
    log.info("%s", summary["sentence"])


def main() -> None:
    stage.run(learning_curve)


if __name__ == "__main__":
    main()
