"""A messy folder of 200+ planted cases: every file is kept or dropped for the right reason, nothing crashes,
the raw folder is untouched, duplicate groups never straddle splits, and a second run is byte-identical."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import clean, ingest, split
from tests.conftest import noisy_image

CLASSES = {"cat": (200, 90, 40), "dog": (60, 120, 200), "fox": (220, 140, 20), "owl": (90, 90, 90)}


def photo(seed: int, size=(96, 72), colour=(128, 128, 128)) -> Image.Image:
    """Smooth gradient plus noise: compresses like a photo, and each seed gives a distinct picture."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 1, size[0]), np.linspace(0, 1, size[1]))
    angle = rng.uniform(0, 2 * np.pi)
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(3, 9) * np.pi)[..., None]
    pixels = np.array(colour) + 60 * wave + rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format=fmt, **options)
    return stream.getvalue()


def build(raw: Path, outside: Path) -> tuple[dict[str, str | None], int]:
    """Write the corpus. Returns {relative path: expected drop reason, or None when kept} and the number of
    hidden files (skipped silently, so not in the manifest)."""
    rng = np.random.default_rng(1234)
    expected: dict[str, str | None] = {}
    seed = iter(range(10_000, 20_000))

    def put(relative: str, data: bytes, reason: str | None) -> None:
        target = raw / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        expected[relative] = reason

    for name, colour in CLASSES.items():
        for n in range(12):  # good JPEGs and PNGs
            fmt, suffix = ("JPEG", "jpg") if n % 2 else ("PNG", "png")
            put(f"{name}/good_{n:02d}.{suffix}", encoded(photo(next(seed), colour=colour), fmt), None)
    for n in range(12):
        put(f"cat/empty_{n}.jpg", b"", "empty_file")
        put(f"dog/text_{n}.png", f"not an image {n}".encode() * 20, "not_an_image")
    for n in range(30):  # truncated at random offsets past the headers
        data = encoded(photo(next(seed), size=(160, 120)), "JPEG", quality=90)
        put(f"fox/cut_{n:02d}.jpg", data[: int(len(data) * rng.uniform(0.3, 0.9))], "truncated_or_corrupt")
        data = encoded(photo(next(seed), size=(160, 120)), "PNG")
        put(f"owl/cut_{n:02d}.png", data[: int(len(data) * rng.uniform(0.3, 0.9))], "truncated_or_corrupt")
    for n in range(3):  # 1-bit, highly compressible, but 400 megapixels: Pillow's bomb guard
        put(f"cat/bomb_{n}.png", encoded(Image.new("1", (20_000, 20_000 + n)), "PNG"), "decompression_bomb")
    for n in range(4):  # above clean.max_pixels (set to 1e6 below) but not a bomb
        put(f"dog/huge_{n}.png", encoded(Image.new("L", (1200 + n, 1000)), "PNG"), "too_many_pixels")
    for n, (fmt, suffix) in enumerate([("ICO", "ico"), ("PPM", "ppm"), ("TGA", "tga"), ("PCX", "pcx")] * 3):
        put(
            f"fox/other_{n:02d}.{suffix}",
            encoded(photo(next(seed), size=(64, 64)), fmt),
            "format_not_allowed",
        )
    for n in range(8):
        put(f"owl/small_{n}.png", encoded(photo(next(seed), size=(20 + n, 40)), "PNG"), "too_small")
        put(f"owl/strip_{n}.png", encoded(photo(next(seed), size=(400 + n, 36)), "PNG"), "extreme_aspect")
    # Modes that must be converted to RGB, and kept.
    base = photo(next(seed), colour=CLASSES["cat"])
    modes = {
        "cmyk.jpg": encoded(base.convert("CMYK"), "JPEG"),
        "grey.png": encoded(photo(next(seed)).convert("L"), "PNG"),
        "grey_alpha.png": encoded(photo(next(seed)).convert("LA"), "PNG"),
        "palette.png": encoded(photo(next(seed)).convert("P"), "PNG"),
        "palette_transparent.gif": encoded(photo(next(seed)).convert("P"), "GIF", transparency=0),
        "rgba.png": encoded(photo(next(seed)).convert("RGBA"), "PNG"),
        "bilevel.bmp": encoded(photo(next(seed)).convert("1"), "BMP"),
        "sixteen.png": encoded(
            Image.fromarray(np.asarray(photo(next(seed)).convert("L"), np.uint16) * 257), "PNG"
        ),
        "photo.webp": encoded(photo(next(seed)), "WEBP"),
        "photo.tiff": encoded(photo(next(seed)), "TIFF"),
    }
    for name, data in modes.items():
        put(f"cat/mode_{name}", data, None)
    for n, orientation in enumerate((3, 6, 8)):  # EXIF-rotated JPEGs
        exif = Image.Exif()
        exif[0x0112] = orientation
        put(
            f"dog/rotated_{n}.jpg", encoded(photo(next(seed), colour=CLASSES["dog"]), "JPEG", exif=exif), None
        )
    for n in range(2):  # corrupt EXIF block: the image itself is fine
        data = bytearray(
            encoded(
                photo(next(seed), colour=CLASSES["dog"]), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"
            )
        )
        put(f"dog/bad_exif_{n}.jpg", bytes(data), None)
    for name in ["with space.png", "naïve café.png", "猫 の 写真.png", "emoji 🦊.png", "$(x);'&.png"]:
        put(f"fox/{name}", encoded(photo(next(seed), colour=CLASSES["fox"]), "PNG"), None)
    for n in range(5):  # exact duplicates within a class: kept, grouped
        put(f"owl/copy_{n}.png", (raw / "owl" / "good_00.png").read_bytes(), None)
    for n in range(4):  # near duplicates: re-encoded at another quality, kept, grouped
        put(
            f"fox/near_{n}.jpg",
            encoded(Image.open(raw / "fox" / "good_01.jpg"), "JPEG", quality=70 + 5 * n),
            None,
        )
    for n in range(3):  # the same picture under another label: the whole group is a conflict
        put(f"dog/conflict_{n}.png", (raw / "cat" / "good_00.png").read_bytes(), "label_conflict")
    expected["cat/good_00.png"] = "label_conflict"
    put("loner/only.png", encoded(photo(next(seed)), "PNG"), "class_too_small")
    put("stray.png", encoded(photo(next(seed)), "PNG"), "wrong_depth")
    put("cat/deeper/nested.png", encoded(photo(next(seed)), "PNG"), "wrong_depth")
    for n in range(3):
        target = outside / f"secret_{n}.png"
        photo(next(seed)).save(target)
        os.symlink(target, raw / "owl" / f"link_{n}.png")
        expected[f"owl/link_{n}.png"] = "outside_root"
    hidden = [".DS_Store", "cat/.DS_Store", "cat/._good_00.png", "dog/Thumbs.db", "fox/desktop.ini", ".git/x"]
    for relative in hidden:
        (raw / relative).parent.mkdir(parents=True, exist_ok=True)
        (raw / relative).write_bytes(b"\x00junk")
    return expected, len(hidden)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if not p.is_symlink()
        else os.readlink(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_messy_corpus(tiny_params, tmp_path: Path):
    raw = Path(tiny_params.paths.raw)
    outside = tmp_path / "outside"
    outside.mkdir()
    expected, _ = build(raw, outside)
    assert len(expected) >= 200
    params = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"max_pixels": 1_000_000})}
    )
    before = digest(raw)

    def run_all() -> dict[str, bytes]:
        ingest.ingest(params)
        clean.clean(params)
        split.split(params)
        reports = Path(params.paths.reports)
        return {
            name: path.read_bytes()
            for name, path in {
                "clean": Path(params.paths.cleaned) / "manifest.csv",
                "split": Path(params.paths.splits) / "manifest.csv",
                "cleaning.json": reports / "cleaning.json",
                "split.json": reports / "split.json",
                "cleaning.md": reports / "cleaning.md",
            }.items()
        }

    first = run_all()
    report = json.loads(first["cleaning.json"])
    kept = pd.read_csv(io.BytesIO(first["clean"]), dtype=str, keep_default_na=False)
    relative = lambda path: Path(path).relative_to(raw).as_posix()  # noqa: E731
    outcome = {relative(d["path"]): d["reason"] for d in report["dropped_files"]}
    assert len(outcome) == len(report["dropped_files"]), "one reason row per dropped file"
    outcome |= {relative(p): None for p in kept["path"]}
    assert len(outcome) == report["scanned"] == report["kept"] + report["dropped"] == len(expected)
    wrong = {
        path: (outcome.get(path), reason) for path, reason in expected.items() if outcome.get(path) != reason
    }
    assert not wrong, wrong

    altered = {(relative(a["path"]), a["reason"]) for a in report["altered_files"]}
    assert ("cat/mode_cmyk.jpg", "converted") in altered and ("dog/rotated_1.jpg", "exif_oriented") in altered
    groups = kept.groupby("group")["path"].apply(lambda s: sorted(relative(p) for p in s))
    assert any(set(g) >= {"owl/good_00.png", "owl/copy_0.png"} for g in groups)
    assert any(set(g) >= {"fox/good_01.jpg", "fox/near_0.jpg", "fox/near_3.jpg"} for g in groups)

    splits = pd.read_csv(io.BytesIO(first["split"]), dtype=str)
    assert splits.groupby("group")["split"].nunique().max() == 1
    assert json.loads(first["split.json"])["leakage"]["near_duplicate_pairs_across_splits"] == 0
    assert digest(raw) == before
    assert run_all() == first  # a second run is byte-identical
    assert (Path(params.paths.reports) / "class_balance.png").stat().st_size > 5000


def test_majority_policy_keeps_the_most_common_label(tiny_params):
    raw = Path(tiny_params.paths.raw)
    for name in ("a", "b"):
        for n in range(3):
            (raw / name).mkdir(parents=True, exist_ok=True)
            noisy_image((10, 20, 30), hash((name, n)) % 10_000).save(raw / name / f"{n}.png")
    shared = noisy_image((90, 90, 90), 77)
    for target in ("a/x1.png", "a/x2.png", "b/x3.png"):
        shared.save(raw / target)
    params = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"label_conflict": "majority"})}
    )
    ingest.ingest(params)
    clean.clean(params)
    report = json.loads((Path(params.paths.reports) / "cleaning.json").read_text())
    assert [(Path(d["path"]).name, d["reason"]) for d in report["dropped_files"]] == [
        ("x3.png", "label_conflict")
    ]


def test_small_class_policy_fail_names_the_class(tiny_params):
    from reprotune.pipeline.errors import InputError

    raw = Path(tiny_params.paths.raw)
    for name, count in (("big", 4), ("tiny", 1), ("other", 3)):
        (raw / name).mkdir(parents=True)
        for n in range(count):
            noisy_image((40 * n, 10, 200), hash((name, n)) % 10_000).save(raw / name / f"{n}.png")
    params = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"small_class": "fail", "min_class_size": 2})}
    )
    ingest.ingest(params)
    with pytest.raises(InputError, match=r"tiny \(1\).*clean.small_class: drop"):
        clean.clean(params)
    assert not Path(params.paths.cleaned).exists()
