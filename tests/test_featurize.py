"""featurize: streamed safetensors, the content-addressed embedding cache, reduced-scale JPEG decoding."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from reprotune.data.embeddings import EmbeddingCache
from reprotune.data.images import load_rgb
from reprotune.data.tensorfiles import open_rows, tensor_file
from reprotune.models.inference import outputs
from reprotune.pipeline.layout import SPLITS, Layout
from stages import clean, featurize, ingest, split
from tests.conftest import make_class_folder, noisy_image


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_streamed_file_is_ordinary_safetensors(tmp_path: Path, rows: int):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(rows, 5)).astype(np.float32)
    labels = np.arange(rows, dtype=np.int64)
    tensors = {"labels": (labels.dtype, labels.shape), "embeddings": (embeddings.dtype, embeddings.shape)}
    with tensor_file(tmp_path / "f.safetensors", tensors, {"note": "x"}) as out:
        out.write(labels)
        for start in range(0, rows, 3):
            out.write(embeddings[start : start + 3])
    loaded = load_file(tmp_path / "f.safetensors")
    assert torch.equal(loaded["labels"], torch.from_numpy(labels))
    assert torch.equal(loaded["embeddings"], torch.from_numpy(embeddings))
    np.testing.assert_array_equal(open_rows(tmp_path / "f.safetensors", "embeddings"), embeddings)


def test_short_or_overfull_writes_are_refused(tmp_path: Path):
    tensors = {"x": (np.dtype(np.float32), (4, 2))}
    with pytest.raises(ValueError, match="4 left"):
        with tensor_file(tmp_path / "f.safetensors", tensors) as out:
            out.write(np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="not filled"):
        with tensor_file(tmp_path / "g.safetensors", tensors) as out:
            out.write(np.zeros((3, 2), np.float32))


def test_a_shard_is_visible_only_when_complete(tmp_path: Path):
    cache = EmbeddingCache(tmp_path, {"recipe": 1})
    digests = np.arange(64, dtype=np.uint8).reshape(2, 32)
    with pytest.raises(RuntimeError):
        with cache.new_shard(2, 3) as shard:
            shard.write(digests)
            raise RuntimeError("crash mid-shard")
    assert len(cache) == 0 and list(cache.folder.glob("*.safetensors")) == []
    with cache.new_shard(2, 3) as shard:
        shard.write(digests)
        shard.write(np.ones((2, 3), np.float32))
    reopened = EmbeddingCache(tmp_path, {"recipe": 1})
    assert len(reopened) == 2 and digests[1].tobytes() in reopened
    assert len(EmbeddingCache(tmp_path, {"recipe": 2})) == 0  # another recipe shares nothing


def featurized(params) -> dict[str, bytes]:
    featurize.featurize(params)
    layout = Layout(params.paths)
    return {split: layout.features_file(split).read_bytes() for split in SPLITS} | {
        "meta": layout.features_meta.read_bytes()
    }


def shards(params) -> list[Path]:
    return sorted(Layout(params.paths).embedding_cache.rglob("shard-*.safetensors"))


def test_cache_reuses_embeddings_and_changes_nothing(tiny_params, tmp_path: Path):
    make_class_folder(Path(tiny_params.paths.raw), per_class=10)
    for stage in (ingest.ingest, clean.clean, split.split):
        stage(tiny_params)
    cold = featurized(tiny_params)
    assert len(shards(tiny_params)) == 1
    warm = featurized(tiny_params)
    assert warm == cold and len(shards(tiny_params)) == 1  # nothing new to embed: no new shard

    # One new image: one more embedding in a new shard; every file as a cold cache would have written it.
    noisy_image((200, 40, 40), seed=999).save(Path(tiny_params.paths.raw) / "red" / "new.png")
    for stage in (ingest.ingest, clean.clean, split.split):
        stage(tiny_params)
    grown = featurized(tiny_params)
    assert len(pd.read_csv(Layout(tiny_params.paths).split_manifest)) == 31
    assert sorted(len(open_rows(shard, "digests")) for shard in shards(tiny_params)) == [1, 30]
    shutil.rmtree(Layout(tiny_params.paths).embedding_cache)
    assert featurized(tiny_params) == grown


def test_a_recipe_change_embeds_again(tiny_params):
    make_class_folder(Path(tiny_params.paths.raw), per_class=4)
    for stage in (ingest.ingest, clean.clean, split.split):
        stage(tiny_params)
    featurized(tiny_params)
    changed = tiny_params.model_copy(
        update={"backbone": tiny_params.backbone.model_copy(update={"channels_last": False})}
    )
    featurized(changed)
    assert len(shards(tiny_params)) == 2 and len({s.parent for s in shards(tiny_params)}) == 2


def jpeg(path: Path, size: tuple[int, int]) -> Path:
    noisy_image((120, 90, 60), seed=size[0], size=size).resize(size).save(path, quality=90)
    return path


@pytest.mark.parametrize("size", [(300, 200), (363, 500), (90, 90)])
def test_draft_decoding_leaves_images_below_twice_the_side_alone(tmp_path: Path, size):
    path = jpeg(tmp_path / "small.jpg", size)
    exact = np.asarray(load_rgb(path, (255, 255, 255)))
    assert np.array_equal(np.asarray(load_rgb(path, (255, 255, 255), min_side=182)), exact)


def test_draft_decoding_keeps_both_sides_at_least_the_side(tmp_path: Path):
    path = jpeg(tmp_path / "big.jpg", (1600, 1000))
    # 1000 // 182 = 5, so libjpeg scales by 1/4 (the largest of 1/2, 1/4, 1/8 that keeps 182 on both sides)
    assert load_rgb(path, (255, 255, 255), min_side=182).size == (400, 250)
    assert load_rgb(path, (255, 255, 255), min_side=300).size == (800, 500)
    assert load_rgb(path, (255, 255, 255)).size == (1600, 1000)


def test_features_through_resized_copies_match_the_files(tiny_params):
    """Every image here is larger than the tiny backbone's 32 px eval side, so featurize reads them all
    from clean's JPEG copies; embedding the files themselves gives nearly the same vectors."""
    from reprotune.data.datasets import ManifestImages, make_loader
    from reprotune.models.backbones import load_backbone

    make_class_folder(Path(tiny_params.paths.raw), per_class=4)
    for stage in (ingest.ingest, clean.clean, split.split):
        stage(tiny_params)
    features = featurized(tiny_params)
    layout = Layout(tiny_params.paths)
    manifest = pd.read_csv(layout.split_manifest, dtype={"label": str})
    train = manifest[manifest["split"] == "train"]
    assert (train["resized"] >= 0).all()

    backbone = load_backbone(tiny_params.backbone)
    data = backbone.data
    files = ManifestImages(train["path"], [0] * len(train), data.eval_transform(), (255, 255, 255))
    model = featurize.prepare(backbone, torch.device("cpu"), tiny_params.backbone.channels_last)
    loader = make_loader(files, tiny_params.featurize.batch_size, 0)
    batches = outputs(model, loader, torch.device("cpu"), True, pad_to=tiny_params.featurize.batch_size)
    from_files = torch.cat(list(batches)).numpy()
    from_copies = load_file(layout.features_file("train"))["embeddings"].numpy()
    assert features["train"] and from_copies.shape == from_files.shape
    cosine = (
        (from_copies * from_files).sum(1)
        / np.linalg.norm(from_copies, axis=1)
        / np.linalg.norm(from_files, axis=1)
    )
    assert cosine.min() > 0.995 and not np.array_equal(from_copies, from_files)


def test_bfloat16_embeddings_are_close_and_cached_apart(tiny_params):
    make_class_folder(Path(tiny_params.paths.raw), per_class=4)
    for stage in (ingest.ingest, clean.clean, split.split):
        stage(tiny_params)
    full = featurized(tiny_params)
    half = tiny_params.model_copy(
        update={"featurize": tiny_params.featurize.model_copy(update={"precision": "bfloat16"})}
    )
    reduced = featurized(half)
    assert len({s.parent for s in shards(tiny_params)}) == 2  # a recipe of its own
    a = load_file(Layout(tiny_params.paths).features_file("train"))["embeddings"].numpy()
    featurized(tiny_params)  # float32 again, from its cache
    b = load_file(Layout(tiny_params.paths).features_file("train"))["embeddings"].numpy()
    assert reduced["train"] != full["train"] and featurized(tiny_params) == full
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99


@pytest.mark.parametrize("count, world", [(0, 2), (1, 2), (7, 3), (30, 2), (31, 4)])
def test_processes_share_the_missing_items_contiguously_without_padding(count, world):
    rows = pd.DataFrame({"n": range(count)})
    shares = [featurize.share(rows, rank, world)["n"].tolist() for rank in range(world)]
    assert sum(shares, []) == list(range(count))  # every item once, in order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.e2e
def test_torchrun_featurize_writes_the_bytes_of_one_process(tiny_params, tmp_path: Path):
    """Two processes (gloo, CPU) each embed half of the images into their own cache shard; the first writes
    the split files, the same bytes as one process writes (whose batches hold other images)."""
    import yaml

    from tests.test_finetune import finish, torchrun

    make_class_folder(Path(tiny_params.paths.raw), per_class=10)
    for stage in (ingest.ingest, clean.clean, split.split):
        stage(tiny_params)
    alone = featurized(tiny_params)
    shutil.rmtree(Layout(tiny_params.paths).embedding_cache)
    shutil.rmtree(Layout(tiny_params.paths).features)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params.model_dump(mode="json")))
    finish([torchrun(["--standalone", "--nproc_per_node", "2"], tmp_path, "featurize")])
    layout = Layout(tiny_params.paths)
    together = {split: layout.features_file(split).read_bytes() for split in SPLITS}
    assert together == {split: alone[split] for split in SPLITS}
    assert layout.features_meta.read_bytes() == alone["meta"]
    assert sorted(len(open_rows(shard, "digests")) for shard in shards(tiny_params)) == [15, 15]
