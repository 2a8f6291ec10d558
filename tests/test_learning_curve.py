"""The learning curve: draws of k images per class, intervals, the reading, and its files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.learning_curve import curve, draw_indices, interval, label_counts, reading, sentence


def blobs(per_class: list[int], seed: int = 0, spread: float = 3.0):
    centres = np.random.default_rng(100).normal(0, 1, (len(per_class), 8)) * 2  # one task, every split
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    return (centres[labels] + rng.normal(0, spread, (len(labels), 8))).astype(np.float32), labels


def test_label_counts_are_powers_of_two_below_the_median_class():
    assert label_counts(1) == [] and label_counts(2) == [1] and label_counts(9) == [1, 2, 4, 8]
    assert label_counts(8) == [1, 2, 4]  # 8 of 8 is every image: the "all" point
    assert label_counts(6.5) == [1, 2, 4]


def test_a_draw_takes_k_of_each_class_or_all_a_small_class_has():
    labels = np.repeat([0, 1, 2], [10, 3, 6])
    chosen = draw_indices(labels, 4, np.random.default_rng(0))
    assert list(np.bincount(labels[chosen])) == [4, 3, 4]
    assert len(set(chosen)) == len(chosen)


def test_interval_is_a_t_interval_of_the_mean():
    mean, low, high = interval([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7) and low == pytest.approx(0.7 - 4.303 * 0.1 / np.sqrt(3), abs=1e-3)
    assert high - mean == pytest.approx(mean - low)
    assert interval([0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert interval([1.0, 1.0, 0.9])[2] == 1.0 and interval([0.0, 0.0, 0.1])[1] == 0.0


def test_the_curve_rises_names_small_classes_and_ends_at_all_the_data(tiny_params):
    data = {split: blobs([40, 40, 40, 6], seed) for split, seed in (("train", 0), ("val", 1), ("test", 2))}
    points = curve(data, tiny_params, 4, ["a", "b", "c", "d"], 1.0)
    assert [p["labels_per_class"] for p in points] == [1, 2, 4, 8, 16, 32, "all"]
    assert (
        all(p["draws"] == tiny_params.learning_curve.draws for p in points[:-1]) and points[-1]["draws"] == 1
    )
    assert (
        points[3]["classes_using_all_they_have"] == ["d"] and points[2]["classes_using_all_they_have"] == []
    )
    assert points[3]["images"] == 8 * 3 + 6 and points[-1]["images"] == 126
    assert points[-1]["test"]["mean"] > points[0]["test"]["mean"] + 0.1  # more labels helped here
    assert all(p["val"]["ci_low"] <= p["val"]["mean"] <= p["val"]["ci_high"] for p in points)
    again = curve(data, tiny_params, 4, ["a", "b", "c", "d"], 1.0)
    assert again == points  # seeded


def test_the_reading_finds_where_the_curve_is_within_a_point_and_the_last_step():
    points = [
        {"labels_per_class": k, "images": 3 * k, "mean_labels_per_class": k, "test": {"mean": m}}
        for k, m in ((1, 0.5), (2, 0.8), (4, 0.895), (8, 0.9))
    ] + [{"labels_per_class": "all", "images": 60, "mean_labels_per_class": 20, "test": {"mean": 0.9}}]
    read = reading(points)
    assert read["within_one_point_at"] == 4 and read["within_one_point_images"] == 12
    assert read["last_step_from"] == 8 and read["last_step_gain"] == 0.0
    text = sentence({"reading": read})
    assert "from 4 labelled images per class (12 in all)" in text and "would probably add little" in text
    points[-1]["test"]["mean"] = 0.95
    read = reading(points)
    assert read["within_one_point_at"] == "all" and read["last_step_gain"] == pytest.approx(0.05)
    text = sentence({"reading": read})
    assert (
        "only with all the training images" in text and "gained 5.0 points" in text and "still help" in text
    )


def test_the_stage_writes_json_csv_and_plot(tiny_params):
    from safetensors.numpy import save_file

    from reprotune.pipeline import data_kind
    from reprotune.pipeline.layout import Layout
    from stages.learning_curve import learning_curve

    layout = Layout(tiny_params.paths)
    layout.features.mkdir(parents=True)
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        x, y = blobs([12, 12], seed)
        save_file({"embeddings": x, "labels": y.astype(np.int64)}, layout.features_file(split))
    layout.features_meta.write_text(json.dumps({"classes": ["a", "b"]}))
    layout.head.mkdir(parents=True)
    layout.head_meta.write_text(json.dumps({"C": 1.0}))  # train_head's choice
    layout.ingested.mkdir(parents=True)
    data_kind.write(layout.data_kind, data_kind.DataKind(data_kind.IMAGE, sample=False))  # as ingest would
    learning_curve(tiny_params)
    summary = json.loads(layout.learning_curve.read_text())
    assert [p["labels_per_class"] for p in summary["points"]] == [1, 2, 4, 8, "all"]
    frame = pd.read_csv(layout.learning_curve_table)
    assert list(frame["point"]) == ["1", "2", "4", "8", "all"] and frame["labels_per_class"].iloc[-1] == 12
    assert summary["sentence"].startswith("The head's test accuracy comes within one point")
    assert Path(layout.learning_curve_plot).stat().st_size > 5000
