import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reprotune.data.dataconfig import data_config
from reprotune.data.images import to_rgb
from reprotune.data.resized import NO_COPY, ResizedCopies, resize_shorter_side
from reprotune.modalities.image import cleaning as image_cleaning
from stages import clean, ingest
from tests.conftest import make_class_folder, noisy_image


def run_clean(params) -> tuple[pd.DataFrame, dict]:
    ingest.ingest(params)
    clean.clean(params)
    kept = pd.read_csv(
        Path(params.paths.cleaned) / "manifest.csv", dtype={"label": str}, keep_default_na=False
    )
    report = json.loads((Path(params.paths.reports) / "cleaning.json").read_text())
    return kept, report


def test_each_bad_file_gets_its_reason(tiny_params):
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=3)
    png = io.BytesIO()
    noisy_image((1, 2, 3), 99).save(png, format="PNG")
    (raw / "red" / "empty.png").write_bytes(b"")
    (raw / "red" / "text.jpg").write_text("not an image")
    (raw / "red" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    Image.new("RGB", (10, 10)).save(raw / "green" / "tiny.png")
    Image.new("RGB", (400, 35)).save(raw / "green" / "strip.png")
    noisy_image((5, 5, 5), 98).save(raw / "blue" / "photo.ico", format="ICO")
    (raw / "blue" / "copy.png").write_bytes((raw / "red" / "000.png").read_bytes())  # label conflict
    (raw / "red" / "copy.png").write_bytes((raw / "red" / "001.png").read_bytes())  # plain duplicate
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}

    kept, report = run_clean(tiny_params)

    reasons = {Path(d["path"]).relative_to(raw).as_posix(): d["reason"] for d in report["dropped_files"]}
    assert reasons == {
        "red/empty.png": "empty_file",
        "red/text.jpg": "not_an_image",
        "red/truncated.png": "truncated_or_corrupt",
        "green/tiny.png": "too_small",
        "green/strip.png": "extreme_aspect",
        "blue/photo.ico": "format_not_allowed",
        "blue/copy.png": "label_conflict",
        "red/000.png": "label_conflict",
    }
    assert report["kept"] + report["dropped"] == report["scanned"] == 9 + 8
    duplicates = kept[kept["path"].isin([str(raw / "red" / "copy.png"), str(raw / "red" / "001.png")])]
    assert len(duplicates) == 2 and duplicates["group"].nunique() == 1
    assert before == {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}  # raw untouched


def test_too_many_pixels_is_refused_from_the_header(tiny_params):
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=2)
    Image.new("L", (3000, 3000)).save(raw / "red" / "huge.png")
    params = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"max_pixels": 1_000_000})}
    )
    _, report = run_clean(params)
    assert [d["reason"] for d in report["dropped_files"]] == ["too_many_pixels"]


def test_fewer_than_two_classes_is_a_clear_error(tiny_params):
    from reprotune.pipeline.errors import InputError

    raw = Path(tiny_params.paths.raw)
    (raw / "only").mkdir(parents=True)
    noisy_image((9, 9, 9), 1).save(raw / "only" / "a.png")
    with pytest.raises(InputError, match="at least 2 classes"):
        run_clean(tiny_params)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGBA", (2, 2), (255, 0, 0, 0)), (10, 20, 30)),  # fully transparent -> background
        (Image.new("RGBA", (2, 2), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("LA", (2, 2), (0, 0)), (10, 20, 30)),
        (Image.new("L", (2, 2), 128), (128, 128, 128)),
        (Image.new("1", (2, 2), 1), (255, 255, 255)),
        (Image.new("CMYK", (2, 2), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16)), (255, 255, 255)),  # 16-bit scaled
        (Image.fromarray(np.full((2, 2), 32896, dtype=np.uint16)), (128, 128, 128)),
    ],
)
def test_modes_become_rgb_correctly(image, expected):
    rgb = to_rgb(image, (10, 20, 30))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == expected


def test_palette_transparency_is_composited():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([255, 0, 0] * 256)
    image.info["transparency"] = 0
    assert to_rgb(image, (1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)


def test_draft_decoding_changes_no_image_below_the_check_size(tmp_path, tiny_params):
    """Reduced-scale decoding only kicks in above image_cleaning.CHECK_SIDE: smaller JPEGs hash as a full decode."""
    import hashlib

    small = noisy_image((100, 150, 200), 5, size=(image_cleaning.CHECK_SIDE - 1, 300))
    small.save(tmp_path / "small.jpg", quality=92)
    found = image_cleaning.inspect(
        tmp_path / "small.jpg",
        tiny_params.clean,
        data_config(tiny_params.backbone.name, tiny_params.backbone.input_size),
    )
    with Image.open(tmp_path / "small.jpg") as full:
        rgb = full.convert("RGB")
    assert found.pixels_sha256 == hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    assert (found.width, found.height) == (image_cleaning.CHECK_SIDE - 1, 300)
    large = noisy_image(
        (100, 150, 200), 6, size=(4 * image_cleaning.CHECK_SIDE, 2 * image_cleaning.CHECK_SIDE)
    )
    large.save(tmp_path / "large.jpg", quality=92)
    assert (
        image_cleaning.inspect(
            tmp_path / "large.jpg",
            tiny_params.clean,
            data_config(tiny_params.backbone.name, tiny_params.backbone.input_size),
        ).width
    ) == 4 * image_cleaning.CHECK_SIDE  # true size


def test_resized_copies_are_the_resize_shorter_side_of_each_larger_image(tiny_params):
    """One copy per kept image larger than the eval side (32 px for the tiny backbone), at exactly the eval
    resize's size and close to it in pixels; none for the others; nothing for dropped files."""
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=3)  # 40 x 40: copied
    noisy_image((200, 30, 30), 7, size=(32, 48)).save(raw / "red" / "at_side.png")  # shorter side 32
    noisy_image((30, 200, 30), 8, size=(640, 480)).save(raw / "green" / "photo.jpg", quality=90)
    (raw / "blue" / "conflict.png").write_bytes((raw / "red" / "000.png").read_bytes())
    kept, report = run_clean(tiny_params)
    copies = ResizedCopies(Path(tiny_params.paths.cleaned) / "resized.safetensors")
    side = data_config(tiny_params.backbone.name, tiny_params.backbone.input_size).eval_decode_side

    assert report["dropped_by_reason"] == {"label_conflict": 2}
    assert sorted(kept.loc[kept["resized"] != NO_COPY, "resized"]) == list(range(len(copies)))
    assert copies.entries() == kept["resized"].tolist()
    for row in kept.itertuples():
        with Image.open(row.path) as image:
            rgb = image.convert("RGB")
        if min(rgb.size) <= side:
            assert row.resized == NO_COPY, row.path
            continue
        expected = np.asarray(resize_shorter_side(rgb, side, "bilinear"), np.float64)
        got = np.asarray(copies.image(row.resized), np.float64)
        assert got.shape == expected.shape and min(got.shape[:2]) == side
        assert 10 * np.log10(255**2 / np.mean((got - expected) ** 2)) > 35, row.path  # PSNR, dB
    assert kept.loc[kept["path"].str.endswith("at_side.png"), "resized"].item() == NO_COPY
    assert kept.loc[kept["path"].str.endswith("photo.jpg"), "resized"].item() != NO_COPY


def test_the_relabel_file_relabels_and_drops_and_the_images_stay_as_they_were(tiny_params):
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=4)
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    moved, dropped = str(raw / "red" / "000.png"), str(raw / "green" / "001.png")
    Path(tiny_params.paths.relabel).parent.mkdir(parents=True, exist_ok=True)
    # as a spreadsheet saves it: a byte-order mark, CRLF line ends, a stray space
    Path(tiny_params.paths.relabel).write_bytes(
        f"\ufeffpath,label\r\n{moved},blue\r\n{dropped}, drop\r\n".encode()
    )

    kept, report = run_clean(tiny_params)

    assert kept.set_index("path").loc[moved, "label"] == "blue"
    assert dropped not in set(kept["path"])
    assert report["relabelled_files"] == [{"path": moved, "from": "red", "to": "blue"}]
    assert {"path": dropped, "reason": "relabel_drop", "detail": tiny_params.paths.relabel} in report[
        "dropped_files"
    ]
    assert report["classes_after"] == {"blue": 5, "green": 3, "red": 3}
    summary = (Path(tiny_params.paths.reports) / "cleaning.md").read_text()
    assert "Relabelled by your relabel file: 1 images" in summary
    assert before == {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}  # raw untouched


def test_an_empty_relabel_file_changes_no_output_byte(tiny_params):
    make_class_folder(Path(tiny_params.paths.raw), per_class=3)
    run_clean(tiny_params)
    outputs = [
        Path(tiny_params.paths.cleaned) / "manifest.csv",
        Path(tiny_params.paths.reports) / "cleaning.json",
    ]
    without = [p.read_bytes() for p in outputs]
    Path(tiny_params.paths.relabel).parent.mkdir(parents=True, exist_ok=True)
    Path(tiny_params.paths.relabel).write_text("path,label\n")
    run_clean(tiny_params)
    assert [p.read_bytes() for p in outputs] == without
    assert "relabelled_files" not in json.loads(outputs[1].read_text())


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("path,label\n{red},purple\n", "label 'purple' is neither a class (blue, green, red) nor `drop`"),
        (
            "path,label\nred/000.png,blue\n",
            "'red/000.png' is not one of the 9 ingested images or text rows; write it as",
        ),
        ("path,label\n{red},blue\n{red},drop\n", "is listed more than once"),
        ("file,new\n{red},blue\n", "the columns must be exactly path,label (got file,new)"),
    ],
)
def test_a_bad_relabel_row_is_refused_naming_the_file_and_line(tiny_params, rows, message):
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=3)
    relabel = Path(tiny_params.paths.relabel)
    relabel.parent.mkdir(parents=True, exist_ok=True)
    relabel.write_text(rows.format(red=raw / "red" / "000.png"))
    ingest.ingest(tiny_params)
    with pytest.raises(clean.InputError) as error:
        clean.clean(tiny_params)
    assert message in str(error.value) and str(relabel) in str(error.value)
    assert not Path(tiny_params.paths.cleaned).exists()  # nothing written


def test_clean_in_worker_processes_writes_the_same_bytes_as_in_one(tiny_params, monkeypatch):
    """clean.num_workers: 2 worker processes (forced even for a few files) give every output byte that clean's
    own process gives: kept rows, resized copies, and each bad file's reason and detail."""
    raw = make_class_folder(Path(tiny_params.paths.raw), per_class=4)
    (raw / "red" / "text.jpg").write_text("not an image")
    Image.new("RGB", (10, 10)).save(raw / "green" / "tiny.png")
    (raw / "red" / "copy.png").write_bytes((raw / "red" / "001.png").read_bytes())
    outputs = sorted(
        [Path(tiny_params.paths.cleaned), Path(tiny_params.paths.reports) / "cleaning.json"], key=str
    )

    def written() -> dict[str, bytes]:
        files = [p for o in outputs for p in ([o] if o.is_file() else sorted(o.rglob("*"))) if p.is_file()]
        return {str(p): p.read_bytes() for p in files}

    monkeypatch.setattr(image_cleaning, "PARALLEL_FROM", 1)
    by_count = {}
    for workers in (0, 2):
        clean_section = tiny_params.clean.model_copy(update={"num_workers": workers})
        run_clean(tiny_params.model_copy(update={"clean": clean_section}))
        by_count[workers] = written()
    assert by_count[0] == by_count[2] and len(by_count[0]) >= 3
    report = json.loads((Path(tiny_params.paths.reports) / "cleaning.json").read_text())
    assert {d["reason"] for d in report["dropped_files"]} == {"not_an_image", "too_small"}
