import os
from pathlib import Path

import pandas as pd
from PIL import Image

from reprotune.modalities.image.files import scan
from reprotune.pipeline.hashing import sha256_of_file
from stages import ingest
from tests.conftest import make_class_folder


def test_class_layout_gives_labels_hashes_and_sizes(tmp_path: Path):
    root = make_class_folder(tmp_path / "raw", per_class=2)
    manifest = scan(root)
    assert len(manifest) == 6
    assert set(manifest["label"]) == {"red", "green", "blue"}
    assert (manifest["given_split"] == "").all() and (manifest["issue"] == "").all()
    first = Path(manifest.loc[0, "path"])
    assert manifest.loc[0, "bytes"] == first.stat().st_size
    assert manifest.loc[0, "sha256"] == sha256_of_file(first)


def test_split_layout_keeps_given_splits(tmp_path: Path):
    root = tmp_path / "raw"
    make_class_folder(root, per_class=1, split="train")
    make_class_folder(root, per_class=1, split="Validation", seed=1)
    manifest = scan(root)
    assert sorted(manifest["given_split"].unique()) == ["train", "val"]
    assert set(manifest["label"]) == {"red", "green", "blue"}


def test_hidden_files_are_ignored_and_odd_files_flagged(tmp_path: Path):
    root = make_class_folder(tmp_path / "raw", per_class=1)
    (root / ".DS_Store").write_bytes(b"x")
    (root / "red" / "._001.png").write_bytes(b"x")
    (root / "red" / "Thumbs.db").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "a.png").write_bytes(b"x")
    (root / "loose.png").write_bytes(b"x")  # no class folder
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (40, 40)).save(outside)
    os.symlink(outside, root / "blue" / "link.png")
    (root / "green" / "naïve café 猫.png").write_bytes((root / "green" / "000.png").read_bytes())
    manifest = scan(root).set_index("path")
    assert len(manifest) == 6
    assert manifest.loc[str(root / "loose.png"), "issue"] == "wrong_depth"
    assert manifest.loc[str(root / "blue" / "link.png"), "issue"] == "outside_root"
    assert manifest.loc[str(root / "green" / "naïve café 猫.png"), "label"] == "green"


def test_sample_is_written_outside_raw_and_looks_like_photos(tmp_path: Path, tiny_params):
    raw = Path(tiny_params.paths.raw)
    raw.mkdir(parents=True)
    (raw / ".gitkeep").touch()
    ingest.ingest(tiny_params)
    assert sorted(p.name for p in raw.iterdir()) == [".gitkeep"]  # raw untouched
    manifest = pd.read_csv(
        Path(tiny_params.paths.ingested) / "manifest.csv", dtype=str, keep_default_na=False
    )
    assert len(manifest) == 1797 and manifest["label"].nunique() == 10
    with Image.open(manifest.loc[0, "path"]) as image:
        assert image.size == (tiny_params.ingest.sample_image_size,) * 2


def test_images_directly_in_the_data_folder_get_the_layout_they_need(tmp_path: Path, tiny_params):
    import pytest

    from reprotune.pipeline.errors import InputError

    raw = Path(tiny_params.paths.raw)
    raw.mkdir(parents=True)
    for n in range(3):
        Image.new("RGB", (40, 40), (n * 60, 0, 0)).save(raw / f"{n}.jpg")
    with pytest.raises(
        InputError,
        match=r"none of its 3 files is at <class>/<image>: put each image in a folder "
        r"named after its class, .*/raw/<class>/<image> \(e\.g\. .*/raw/cat/001\.jpg",
    ):
        ingest.ingest(tiny_params)
    assert not Path(tiny_params.paths.ingested).exists()


def test_an_empty_data_folder_says_the_sample_runs_and_how_to_train_on_your_own(
    tmp_path: Path, tiny_params, caplog
):
    raw = Path(tiny_params.paths.raw)
    raw.mkdir(parents=True)
    with caplog.at_level("WARNING"):
        ingest.ingest(tiny_params)
    assert f"{raw} holds no files: training the built-in sample" in caplog.text
    assert f"put them in {raw}/<class>/<image>" in caplog.text
