"""Fixtures: tiny image folders made on the fly, and the project's real params shrunk for speed."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from reprotune.pipeline import params as params_module
from reprotune.pipeline.params import Params

ROOT = Path(__file__).resolve().parents[1]
# The pipeline's stages in dvc.yaml's order, which is the order `dvc repro` runs them in.
PIPELINE_STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def noisy_image(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (40, 40)) -> Image.Image:
    """A distinct picture per seed (noise around a class colour), so no two are duplicates."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def make_class_folder(
    root: Path, per_class: int = 10, split: str | None = None, seed: int = 0, size: tuple[int, int] = (40, 40)
) -> Path:
    """root/[split/]<colour>/<n>.png, `per_class` images of each of three colour classes."""
    for index, (name, colour) in enumerate(COLOURS.items()):
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            noisy_image(colour, seed * 10_000_000 + index * 1_000_000 + n, size).save(folder / f"{n:03d}.png")
    return root


def real_params_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params_raw(base: Path | None = None, images: bool = True) -> dict:
    """The repository's params.yaml, shrunk: tiny test backbone, one epoch, paths under `base`; with
    `images`, every `auto` written out as on an image folder."""
    raw = copy.deepcopy(real_params_raw())
    raw["backbone"].update(name="reprotune-tiny-test", input_size=32)
    raw["finetune"].update(epochs=1, batch_size=8)
    raw["featurize"]["batch_size"] = 16
    raw["split"].update(val_fraction=0.2, test_fraction=0.2)
    if base is not None:
        raw["paths"] = {key: str(base / value) for key, value in raw["paths"].items()}
    return as_image_folder(raw) if images else raw


def as_image_folder(raw: dict) -> dict:
    """`raw` with every `auto` written out as it resolves on a user's image folder (what the tiny image
    folders of these tests are), so that stage functions called directly get the values stage.run would
    give them."""
    from reprotune.pipeline.resolve import for_data

    return for_data(params_module.validate(raw)).model_dump(mode="json")


@pytest.fixture
def tiny_params(tmp_path: Path) -> Params:
    return params_module.validate(tiny_params_raw(tmp_path))


def copy_project(destination: Path) -> Path:
    """The project as a fresh clone would have it (tracked files only), in its own git repository."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess a test starts (dvc, a stage, an MLflow server): this one without any
    MLFLOW_* or DVC_* variable of the caller's (a tracking URI or a DVC experiment would leak into the run),
    with this virtual environment's `python` and `dvc` first on PATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def photo_like(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A distinct picture per seed with a photo's structure (smooth shading, a few shapes of different
    colours, sensor-like noise), where a noise-only image has none for a perceptual hash to hold on to."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    shading = np.stack([np.sin(x * rng.uniform(1, 4) + y * rng.uniform(1, 4) + c) for c in range(3)], -1)
    image = Image.fromarray(((shading + 1) * 100 + 20).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.uniform(0, 0.8, 2) * size
        w, h = rng.uniform(0.1, 0.4, 2) * size
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> Params:
    """One tiny project trained, evaluated and exported, shared by the tests that only read it (export's
    files, predict): the pipeline runs once per test session instead of once per test."""
    import importlib

    params = params_module.validate(tiny_params_raw(tmp_path_factory.mktemp("trained")))
    make_class_folder(Path(params.paths.raw), per_class=10)
    for name in PIPELINE_STAGES[: PIPELINE_STAGES.index("export") + 1]:  # dvc.yaml's order, up to export
        getattr(importlib.import_module(f"stages.{name}"), name)(params)
    return params
