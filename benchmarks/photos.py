"""Photo-like JPEGs for the benchmarks: smooth gradients, edges and noise, so that they compress (and
decode) like photographs rather than like flat colour or pure noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"0.2MP": (512, 384), "2MP": (1600, 1200), "12MP": (4000, 3000)}


def make_photos(
    folder: Path, count: int, size: tuple[int, int], prefix: str = "photo", seed: int = 0
) -> list[Path]:
    """`count` JPEGs of `size` (quality 90) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    small = (max(8, size[0] // 8), max(8, size[1] // 8))
    paths = []
    for n in range(count):
        x, y = np.meshgrid(np.linspace(0, 1, small[0]), np.linspace(0, 1, small[1]))
        base = np.stack(
            [np.sin((x * rng.uniform(2, 9) + y * rng.uniform(2, 9)) * np.pi + c) for c in range(3)], -1
        )
        thumb = Image.fromarray(
            ((base + 1) * 110 + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)
        )
        big = np.asarray(thumb.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        big = (big + rng.integers(-8, 9, big.shape, dtype=np.int16)).clip(0, 255).astype(np.uint8)
        path = folder / f"{prefix}_{n:04d}.jpg"
        Image.fromarray(big).save(path, quality=90)
        paths.append(path)
    return paths
