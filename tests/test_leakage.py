import csv
import itertools
import json
import logging

import numpy as np
import pytest
from safetensors.numpy import save_file

from reprotune.data import similar_embeddings
from reprotune.data.similar_embeddings import normalised, pairs_across
from reprotune.pipeline.layout import SPLITS, Layout
from stages import leakage


def brute_force(splits: dict[str, np.ndarray], min_cosine: float) -> list[tuple[float, str, int, str, int]]:
    names, found = list(splits), []
    for a, b in itertools.combinations(names, 2):
        scores = normalised(splits[a]) @ normalised(splits[b]).T
        for i, j in zip(*np.nonzero(scores > min_cosine), strict=True):
            found.append((-round(float(scores[i, j]), 4), a, int(i), b, int(j)))
    return sorted(found)


def planted(seed: int) -> dict[str, np.ndarray]:
    """Random embeddings (far apart in 32 dimensions), with near copies of train rows planted in val and
    test at a spread of closeness, and one val row copied into test."""
    rng = np.random.default_rng(seed)
    splits = {
        "train": rng.normal(size=(300, 32)),
        "val": rng.normal(size=(60, 32)),
        "test": rng.normal(size=(70, 32)),
    }
    for k, noise in enumerate(np.linspace(0.01, 0.6, 20)):
        target = "val" if k % 2 else "test"
        splits[target][k] = splits["train"][k * 7] + rng.normal(scale=noise, size=32)
    splits["test"][50] = 3 * splits["val"][40]  # a scaled copy: cosine 1
    return {name: rows.astype(np.float32) for name, rows in splits.items()}


@pytest.mark.parametrize("min_cosine", [0.5, 0.9, 0.99])
def test_pairs_across_splits_are_every_pair_brute_force_finds_in_its_order(monkeypatch, min_cosine):
    monkeypatch.setattr(similar_embeddings, "QUERY_BLOCK", 16)  # several blocks per split
    monkeypatch.setattr(similar_embeddings, "INDEX_TILE", 64)  # and several tiles of the indexed ones
    splits = planted(0)
    expected = brute_force(splits, min_cosine)
    count, pairs = pairs_across(splits, min_cosine)
    found = [(p.negative_cosine, p.split_a, p.row_a, p.split_b, p.row_b) for p in pairs]
    # FAISS and numpy may differ in the last float bit: compare the pairs, and the cosines to 1e-3
    assert count == len(expected) and {f[1:] for f in found} == {e[1:] for e in expected}
    assert np.allclose([f[0] for f in found], [e[0] for e in expected], atol=1e-3)
    assert found == sorted(found)
    assert ("val", 40, "test", 50) in {f[1:] for f in found}


def test_only_the_most_similar_pairs_are_listed_but_every_pair_is_counted(monkeypatch):
    monkeypatch.setattr(similar_embeddings, "MAX_LISTED", 3)
    monkeypatch.setattr(similar_embeddings, "QUERY_BLOCK", 8)
    splits = planted(1)
    expected = brute_force(splits, 0.3)
    count, pairs = pairs_across(splits, 0.3)
    assert count == len(expected) > 3
    assert [(p.split_a, p.row_a, p.split_b, p.row_b) for p in pairs] == [e[1:] for e in expected[:3]]


def test_memory_mapped_features_files_give_the_pairs_of_rows_in_memory(monkeypatch, tmp_path):
    """The stage reads each split from its features file a tile or a block at a time, never whole."""
    from reprotune.data.tensorfiles import open_rows

    monkeypatch.setattr(similar_embeddings, "QUERY_BLOCK", 16)
    monkeypatch.setattr(similar_embeddings, "INDEX_TILE", 100)
    splits = planted(2)
    mapped = {}
    for name, rows in splits.items():
        save_file({"labels": np.zeros(len(rows), np.int64), "embeddings": rows}, tmp_path / f"{name}.st")
        mapped[name] = open_rows(tmp_path / f"{name}.st", "embeddings")
    assert isinstance(mapped["train"], np.memmap) and np.array_equal(mapped["val"], splits["val"])
    assert pairs_across(mapped, 0.5) == pairs_across(splits, 0.5)
    assert pairs_across(mapped, 0.5)[0] > 10


def write_features(layout: Layout, splits: dict[str, np.ndarray]) -> dict[str, list[str]]:
    layout.features.mkdir(parents=True)
    paths = {
        split: [f"data/raw/{split}/{n:03d}.jpg" for n in range(len(rows))] for split, rows in splits.items()
    }
    for split, rows in splits.items():
        save_file({"labels": np.zeros(len(rows), np.int64), "embeddings": rows}, layout.features_file(split))
    layout.features_meta.write_text(json.dumps({"backbone": "tf_efficientnet_lite0", "paths": paths}))
    return paths


def test_the_stage_lists_copies_across_splits_with_their_paths_and_says_so(tiny_params, caplog):
    params = tiny_params.model_copy(
        update={"leakage": tiny_params.leakage.model_copy(update={"min_cosine": 0.95})}
    )
    layout = Layout(params.paths)
    rng = np.random.default_rng(2)
    splits = {split: rng.normal(size=(20, 16)).astype(np.float32) for split in SPLITS}
    splits["test"][3] = splits["train"][11] * 0.5 + rng.normal(scale=0.01, size=16)
    paths = write_features(layout, splits)
    with caplog.at_level(logging.WARNING):
        leakage.leakage(params)
    with layout.leakage_pairs.open(encoding="utf-8") as table:
        rows = list(csv.DictReader(table))
    assert (
        len(rows) == 1 and rows[0]["path_a"] == paths["train"][11] and rows[0]["path_b"] == paths["test"][3]
    )
    assert float(rows[0]["cosine"]) > 0.99
    assert json.loads(layout.leakage_report.read_text())["pairs_across_splits"] == 1
    section = layout.report_section("leakage").read_text()
    assert "**1 pairs**" in section and paths["test"][3] in section
    assert "1 pairs across splits" in caplog.text


def test_with_the_check_off_nothing_is_listed_and_the_report_says_off(tiny_params):
    params = tiny_params.model_copy(
        update={"leakage": tiny_params.leakage.model_copy(update={"min_cosine": None})}
    )
    layout = Layout(params.paths)
    write_features(layout, {split: np.ones((4, 8), np.float32) for split in SPLITS})  # all alike
    leakage.leakage(params)
    assert layout.leakage_pairs.read_text().strip() == "cosine,split_a,path_a,split_b,path_b"
    assert "off" in layout.report_section("leakage").read_text()


def test_no_pair_across_splits_is_reported_as_none(tiny_params):
    layout = Layout(tiny_params.paths)
    rng = np.random.default_rng(3)
    write_features(layout, {split: rng.normal(size=(30, 64)).astype(np.float32) for split in SPLITS})
    leakage.leakage(tiny_params)  # tiny_params: an image folder's auto (0.9)
    assert json.loads(layout.leakage_report.read_text())["pairs_across_splits"] == 0
    assert "no pair" in layout.report_section("leakage").read_text()
