"""Near duplicates as real folders hold them: each kind of copy lands in its original's group at the default
params.yaml distance, distinct pictures do not, and the grouping does not depend on file order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from reprotune.data import duplicates
from reprotune.data.dataconfig import data_config
from reprotune.data.duplicates import HASHES, WHOLE, WORDS, frame, image_hashes, near_pairs
from reprotune.modalities.image import cleaning as image_cleaning
from reprotune.pipeline import params as params_module
from reprotune.pipeline.resolve import for_data
from tests.conftest import ROOT, photo_like

PARAMS = for_data(params_module.load(ROOT / "params.yaml"))  # the shipped default distance, not a test's own
RULES = PARAMS.clean.model_copy(update={"min_side": 1})
DATA = data_config("reprotune-tiny-test", 32)


def resized(factor):
    return lambda im: im.resize(
        (round(im.width * factor), round(im.height * factor)), Image.Resampling.LANCZOS
    )


def cropped(left, top, right, bottom):
    return lambda im: im.crop(
        (
            round(im.width * left),
            round(im.height * top),
            im.width - round(im.width * right),
            im.height - round(im.height * bottom),
        )
    )


# kind -> (how the copy is made, how it is saved)
COPIES = {
    "resized to a quarter": (resized(0.25), {"format": "PNG"}),
    "resized to half, JPEG quality 70": (resized(0.5), {"format": "JPEG", "quality": 70}),
    "resized 4x": (resized(4), {"format": "PNG"}),
    "JPEG quality 50": (lambda im: im, {"format": "JPEG", "quality": 50}),
    "PNG to JPEG": (lambda im: im, {"format": "JPEG", "quality": 90}),
    "cropped 5% every side": (cropped(0.05, 0.05, 0.05, 0.05), {"format": "PNG"}),
    "cropped 4% one side": (cropped(0.04, 0, 0, 0), {"format": "PNG"}),
    "white border 5%": (lambda im: ImageOps.expand(im, (16, 12), fill=(255, 255, 255)), {"format": "PNG"}),
    "black border on one side": (
        lambda im: ImageOps.expand(im, (6, 0, 0, 0), fill=(0, 0, 0)),
        {"format": "JPEG", "quality": 90},
    ),
    "EXIF re-orientation": (lambda im: im, {"format": "JPEG", "quality": 95, "exif_rotate": True}),
}


def save(image: Image.Image, path: Path, how: dict) -> Path:
    if how.get(
        "exif_rotate"
    ):  # pixels stored rotated, and a tag (6: turn 90 clockwise) that shows them as before
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=how["quality"], exif=exif)
    else:
        image.save(path, how["format"], **({"quality": how["quality"]} if "quality" in how else {}))
    return path


def groups_of(paths: list[Path]) -> list[int]:
    found = [image_cleaning.inspect(path, RULES, DATA) for path in paths]
    return image_cleaning.duplicate_groups(
        [f.pixels_sha256 for f in found],
        np.stack([f.hashes for f in found]),
        PARAMS.clean.near_duplicate_distance,
    )


@pytest.mark.parametrize("kind", list(COPIES))
def test_each_kind_of_copy_is_grouped_with_its_original(tmp_path: Path, kind: str):
    make, how = COPIES[kind]
    originals = [
        save(photo_like(seed), tmp_path / f"original{seed}.png", {"format": "PNG"}) for seed in range(3)
    ]
    copy = save(make(photo_like(1)), tmp_path / f"copy.{how['format'].lower()}", how)
    groups = groups_of([*originals, copy])
    assert groups[3] == groups[1], f"{kind}: the copy is not in its original's group"
    assert len({groups[0], groups[1], groups[2]}) == 3, "distinct originals were grouped"


def test_distinct_pictures_of_one_kind_stay_apart(tmp_path: Path):
    paths = [
        save(photo_like(seed), tmp_path / f"{seed}.jpg", {"format": "JPEG", "quality": 90})
        for seed in range(24)
    ]
    assert sorted(groups_of(paths)) == list(range(24))


def test_grouping_does_not_depend_on_file_order(tmp_path: Path):
    paths = []
    for seed in range(6):
        paths.append(save(photo_like(seed), tmp_path / f"{seed}.png", {"format": "PNG"}))
        make, how = (
            COPIES["resized to half, JPEG quality 70"] if seed % 2 else COPIES["cropped 5% every side"]
        )
        paths.append(save(make(photo_like(seed)), tmp_path / f"{seed}-copy.{how['format'].lower()}", how))

    def partition(order: list[int]) -> set[frozenset[str]]:
        groups = groups_of([paths[i] for i in order])
        members: dict[int, set[str]] = {}
        for i, group in zip(order, groups, strict=True):
            members.setdefault(group, set()).add(paths[i].name)
        return {frozenset(m) for m in members.values()}

    forward = partition(list(range(len(paths))))
    assert len(forward) == 6  # each picture with its copy
    for seed in range(3):
        assert partition(list(np.random.default_rng(seed).permutation(len(paths)))) == forward


def test_a_uniform_frame_is_found_and_a_photo_edge_is_not():
    grey = np.full((100, 80), 255.0)
    grey[10:95, 4:80] = np.random.default_rng(0).uniform(0, 255, (85, 76))
    assert frame(grey) == (4, 10, 80, 95)
    assert frame(np.asarray(photo_like(3).convert("L"), dtype=np.float32)) == (0, 0, 320, 240)


def test_pairs_are_the_least_distance_over_whole_and_crop_hashes():
    hashes = np.zeros((2, HASHES, WORDS), dtype=np.uint64)
    hashes[1] = np.uint64(2**64 - 1)  # every bit differs ...
    hashes[1, 5] = 0  # ... except one crop hash of image 1, which equals image 0's whole picture
    assert near_pairs(hashes, 0).as_dict() == {(0, 1): 0}
    hashes[1, 5, 0] = np.uint64(0b111)
    assert near_pairs(hashes, 2).as_dict() == {} and near_pairs(hashes, 3).as_dict() == {(0, 1): 3}


def brute_force_pairs(hashes: np.ndarray, max_distance: int) -> dict[tuple[int, int], int]:
    """The definition, pair by pair: the least popcount of whole-of-one XOR any-of-the-other, both ways."""
    bits = np.unpackbits(np.ascontiguousarray(hashes, dtype=">u8").view(np.uint8), axis=-1).astype(bool)
    pairs = {}
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            one_way = (bits[i, :WHOLE, None] != bits[j, None, :]).sum(-1).min()
            other_way = (bits[j, :WHOLE, None] != bits[i, None, :]).sum(-1).min()
            if (distance := int(min(one_way, other_way))) <= max_distance:
                pairs[(i, j)] = distance
    return pairs


def test_the_index_finds_exactly_the_pairs_brute_force_finds():
    """On random hash sets with planted copies (whole-to-whole and whole-to-crop, at and around the
    distance), and on the real hash sets of photos with resized, cropped and framed copies."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(120, HASHES, WORDS), dtype=np.uint64)
    for k in range(0, 110, 6):
        flips = rng.choice(256, size=rng.integers(30, 50), replace=False)  # some within 40 bits, some not
        mask = np.zeros(256, dtype=bool)
        mask[flips] = True
        noise = np.packbits(mask).view(">u8").astype(np.uint64)
        hashes[k + 1, 0] = hashes[k, 0] ^ noise  # whole to whole
        hashes[k + 2, rng.integers(WHOLE, HASHES)] = (
            hashes[k, 1] ^ noise
        )  # a crop of one to the other's whole
    hashes[::3, 1] = hashes[::3, 0]  # no frame: the trimmed hash is the stored one, as clean makes it
    hashes[7, 1] = hashes[6, 3]  # a trimmed hash that differs, and matches a crop of another
    for distance in (0, 35, 40, 45, 130):  # 130: beyond the search's 128-bit prefix
        assert near_pairs(hashes, distance).as_dict() == brute_force_pairs(hashes, distance)
    assert len(near_pairs(hashes, 45)) > len(near_pairs(hashes, 35)) > 0

    photos = [photo_like(seed) for seed in range(6)]
    copies = [resized(0.5), cropped(0.05, 0, 0, 0.05), lambda im: ImageOps.expand(im, 20, fill=(0, 0, 0))]
    real = np.stack(
        [image_hashes(image) for photo in photos for image in (photo, *(c(photo) for c in copies))]
    )
    found = near_pairs(real, 40).as_dict()
    assert found == brute_force_pairs(real, 40) and list(found) == sorted(found)
    assert all((4 * k, 4 * k + c) in found for k in range(6) for c in (1, 2, 3))  # every copy found


def test_groups_join_pairs_transitively_numbered_by_first_member():
    """Same pixels (0 and 4), a chain of near pairs (1-5, 5-2) and a loner (3): ids in order of each group's
    first member, as clean's manifest shows them."""
    hashes = np.zeros((6, HASHES, WORDS), dtype=np.uint64)
    for image, word in enumerate([1, 2, 3, 4, 5, 6]):  # far apart: each its own bits
        hashes[image] = np.uint64((1 << (10 * word)) - 1)
    hashes[5] = hashes[1]
    hashes[5, 2:] = hashes[2, 0]  # every crop of 5 is 2's whole picture: 5 and 2 pair
    pixels = ["a", "b", "c", "d", "a", "e"]
    assert image_cleaning.duplicate_groups(pixels, hashes, 0) == [0, 1, 1, 2, 0, 1]
    assert image_cleaning.duplicate_groups(pixels, hashes, None) == [0, 1, 2, 3, 0, 4]


def test_tiles_and_blocks_change_no_pair(monkeypatch):
    """The index searched a few codes at a time, queries and candidates in small blocks: the same pairs as
    one pass (the tiles' and blocks' edges fall inside images' hash sets)."""
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, size=(40, HASHES, WORDS), dtype=np.uint64)
    hashes[::2, 1] = hashes[::2, 0]
    for k in range(0, 36, 4):
        hashes[k + 1, 0] = hashes[k, 0] ^ np.uint64(0xFFFF)
        hashes[k + 3, WHOLE + 5] = hashes[k, 0] ^ np.uint64(0xFF)
    whole = near_pairs(hashes, 40).as_dict()
    assert len(whole) >= 18
    monkeypatch.setattr(duplicates, "INDEX_TILE", 7)
    monkeypatch.setattr(duplicates, "QUERY_BLOCK", 5)
    monkeypatch.setattr(duplicates, "VERIFY_BLOCK", 3)
    assert near_pairs(hashes, 40).as_dict() == whole == brute_force_pairs(hashes, 40)


def test_whole_codes_or_prefixes_find_the_same_pairs(monkeypatch):
    """search_plan searches 128-bit prefixes of codes that look random and whole codes of alike ones (where
    most prefixes would pass and be measured again); either way, forced, the pairs are brute force's."""
    rng = np.random.default_rng(5)
    random = rng.integers(0, 2**63, size=(30, HASHES, WORDS), dtype=np.uint64)
    alike = np.broadcast_to(random[0, 0], (30, HASHES, WORDS)).copy()
    alike ^= rng.integers(0, 2**63, size=alike.shape, dtype=np.uint64) & np.uint64(0x0101010101010101)
    whole = np.ascontiguousarray(random[:, :WHOLE].reshape(-1, WORDS), dtype=">u8").view(np.uint8)
    codes = np.ascontiguousarray(random.reshape(-1, WORDS), dtype=">u8").view(np.uint8)
    assert duplicates.search_plan(whole, codes, 40)[0] == duplicates.PREFIX_BYTES
    whole = np.ascontiguousarray(alike[:, :WHOLE].reshape(-1, WORDS), dtype=">u8").view(np.uint8)
    codes = np.ascontiguousarray(alike.reshape(-1, WORDS), dtype=">u8").view(np.uint8)
    assert duplicates.search_plan(whole, codes, 9)[0] == duplicates.CODE_BYTES
    for hashes, distance in ((random, 130), (alike, 7), (alike, 9)):
        expected = brute_force_pairs(hashes, distance)
        for pays in (-1.0, 2.0):  # always whole codes, always prefixes
            monkeypatch.setattr(duplicates, "PREFIX_PAYS", pays)
            assert near_pairs(hashes, distance).as_dict() == expected
    assert 0 < len(brute_force_pairs(alike, 7)) < len(brute_force_pairs(alike, 9)) < 435  # of 435 pairs
