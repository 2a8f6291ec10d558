"""Any data folder: odd names, tiny and huge file counts, degenerate classes. A clear message or a correct
run, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from stages import clean, featurize, ingest, split
from tests.conftest import COLOURS, make_class_folder, noisy_image, tiny_params_raw

# One character from each Unicode plane in use (0 BMP, 1 SMP, 2 SIP, 3 TIP, 14 SSP, 15-16 private use),
# then shell and CSV metacharacters: quoting, globbing, substitution, separators, newlines.
ODD_NAMES = [
    "naïve café 猫",
    "𝔘𝔫𝔦 😀",
    "\U00020000\U0002a6d6",
    "\U00030000",
    "tag\U000e0041",
    "private\U000f0001\U00100001",
    "$(touch pwned) `id` ; rm -rf ~",
    "quote ' and \" , comma",
    "*?[glob]{a,b}|&<>!#%",
    "line\nbreak\ttab",
    " leading and trailing ",
    "-starts-with-dash",
]


def through_featurize(params) -> pd.DataFrame:
    for stage in (ingest.ingest, clean.clean, split.split, featurize.featurize):
        stage(params)
    return pd.read_csv(Layout(params.paths).split_manifest, dtype=str, keep_default_na=False)


def test_names_from_every_plane_and_shell_metacharacters(tiny_params):
    raw = Path(tiny_params.paths.raw)
    for index, (label, colour) in enumerate(COLOURS.items()):
        folder = raw / f"{label} ✓ $HOME"
        folder.mkdir(parents=True)
        for n, name in enumerate(ODD_NAMES):
            noisy_image(colour, index * 100 + n).save(folder / f"{name}.png")
    manifest = through_featurize(tiny_params)
    assert len(manifest) == 3 * len(ODD_NAMES)
    assert sorted(Path(p).stem for p in manifest["path"]) == sorted(ODD_NAMES * 3)
    assert all(Path(p).is_file() for p in manifest["path"])
    assert not (Path.cwd() / "pwned").exists()
    assert (
        sum(
            len(load_file(Layout(tiny_params.paths).features_file(s))["labels"])
            for s in ("train", "val", "test")
        )
        == 36
    )


def test_a_class_with_one_image_is_dropped_or_refused_by_policy(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=6)
    (raw / "lonely").mkdir()
    noisy_image((1, 2, 3), 7).save(raw / "lonely" / "only.png")
    manifest = through_featurize(tiny_params)
    assert "lonely" not in set(manifest["label"]) and len(manifest) == 18
    report = (Path(tiny_params.paths.reports) / "cleaning.json").read_text()
    assert "only.png" in report
    strict = tiny_params.model_copy(
        update={"clean": tiny_params.clean.model_copy(update={"small_class": "fail"})}
    )
    with pytest.raises(InputError, match="lonely"):
        ingest.ingest(strict)
        clean.clean(strict)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda raw: (
                (raw / "only").mkdir(parents=True) or noisy_image((9, 9, 9), 1).save(raw / "only" / "a.png")
            ),
            "at least 2 classes",
        ),
        (
            lambda raw: (
                [(raw / c).mkdir(parents=True) for c in ("a", "b")]
                and [(raw / c / "x.png").write_bytes(b"not an image") for c in ("a", "b")]
            ),
            "0 usable images",
        ),
    ],
    ids=["single_class", "nothing_decodes"],
)
@pytest.mark.e2e
def test_degenerate_folders_get_one_line_and_no_traceback(tmp_path: Path, build, message):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    build(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_raw(tmp_path), sort_keys=False))
    for stage in ("ingest", "clean"):
        done = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": ""},
        )
        if done.returncode:
            break
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], done.stderr


@pytest.mark.slow
def test_ten_thousand_tiny_files(tiny_params):
    raw = Path(tiny_params.paths.raw)
    make_class_folder(raw, per_class=3334)  # 10,002 distinct 40 px PNGs
    manifest = through_featurize(tiny_params)
    assert len(manifest) == 10_002
    assert set(manifest["split"]) == {"train", "val", "test"}
