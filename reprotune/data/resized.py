"""Resized copies: an image decoded once and stored at the size a transform needs, so later passes decode a
small JPEG instead of the file.

clean makes one for each kept image at the eval side; finetune makes one for each training image at the
training side, once per run, for its random crops (stages/finetune.py: training_copies).

Every later eval pass over an image (featurize, finetune's validation each epoch, evaluate) wants the same
thing: the picture resized so that its shorter side is the backbone's eval side
(floor(input_size / crop_pct)), then centre-cropped. Clean already decodes every file to check it, so it
also writes that resized picture once; the eval transform's resize is then a no-op, and a 12-megapixel
photo costs a 0.05-megapixel JPEG decode on every later pass instead of a reduced-scale decode of the whole
file.

Copies are JPEG at quality 95 without chroma subsampling (about 43 dB PSNR against the resized picture on
the benchmark's noisy photos): an uncompressed copy would be several times the size of a folder of ordinary
photos. Only images larger than the side get a copy; smaller ones are read from their own files, exactly as
before.

A pack of copies is one safetensors file: for each image, its copy's number or NO_COPY (`entries`); the JPEG
bytes end to end (`bytes`) and where each copy starts (`offsets`, copies + 1). One file, so DVC hashes one
file rather than one per image.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from reprotune.data.tensorfiles import open_rows, tensor_file, tensor_start

QUALITY = 95
SUBSAMPLING = 0  # 4:4:4: chroma at full resolution
NO_COPY = -1  # the manifest's `resized` value for an image read from its own file
COPY_BLOCK = 1 << 20  # bytes moved at a time when the pack is assembled


def resize_shorter_side(image: Image.Image, side: int, interpolation: str) -> Image.Image:
    """`image` with its shorter side resized to `side`: what the eval transform's first step (timm's
    Resize(side), antialiased) does."""
    return F.resize(image, side, interpolation=InterpolationMode(interpolation), antialias=True)


def encode_copy(rgb: Image.Image, side: int, interpolation: str) -> bytes | None:
    """The JPEG copy of `rgb` resized to shorter side `side`, or None when it is not larger than that."""
    if min(rgb.size) <= side:
        return None
    buffer = io.BytesIO()
    resize_shorter_side(rgb, side, interpolation).save(
        buffer, "JPEG", quality=QUALITY, subsampling=SUBSAMPLING
    )
    return buffer.getvalue()


class CopyPackWriter:
    """Collects copies as they are made (in a scratch file beside `path`), then writes the pack holding
    only the ones still wanted, once the kept set is known."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._scratch_path = path.with_name(f".{path.name}.scratch")
        self._scratch = self._scratch_path.open("w+b")
        self._spans: list[tuple[int, int]] = []
        self._end = 0

    def add(self, copy: bytes | None) -> int:
        """Store `copy`; its scratch index, or NO_COPY for None."""
        if copy is None:
            return NO_COPY
        self._scratch.write(copy)
        self._spans.append((self._end, len(copy)))
        self._end += len(copy)
        return len(self._spans) - 1

    def finish(self, wanted: Sequence[int]) -> list[int]:
        """Write the pack for the images whose scratch indices are `wanted` (NO_COPY for none), in that order;
        return each one's copy number in the pack (its entry)."""
        spans = [self._spans[i] for i in wanted if i != NO_COPY]
        offsets = np.cumsum([0] + [length for _, length in spans], dtype=np.int64)
        numbering = iter(range(len(spans)))
        entries = [NO_COPY if i == NO_COPY else next(numbering) for i in wanted]
        self._scratch.flush()
        tensors = {
            "entries": (np.dtype(np.int64), (len(entries),)),
            "offsets": (np.dtype(np.int64), (len(offsets),)),
            "bytes": (np.dtype(np.uint8), (int(offsets[-1]),)),
        }
        with tensor_file(self.path, tensors, {"format": "JPEG", "quality": str(QUALITY)}) as pack:
            pack.write(np.asarray(entries, np.int64))
            pack.write(offsets)
            for start, length in spans:
                self._scratch.seek(start)
                while length:
                    block = self._scratch.read(min(length, COPY_BLOCK))
                    pack.write(np.frombuffer(block, np.uint8))
                    length -= len(block)
        return entries

    def close(self) -> None:
        self._scratch.close()
        self._scratch_path.unlink(missing_ok=True)

    def __enter__(self) -> CopyPackWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ResizedCopies:
    """Read side of the pack. Copies are read with pread rather than through a memory map, so that what a
    pass has read does not stay mapped into the process (its peak memory stays flat with the dataset).
    The file is opened on first use in each process, so data-loader workers each open their own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offsets: np.ndarray | None = None
        self._start = 0
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_offsets": None, "_start": 0, "_file": None, "_pid": None}

    def __len__(self) -> int:
        self._open()
        return len(self._offsets) - 1

    def entries(self) -> list[int]:
        """Each image's copy number, or NO_COPY, in the order the pack was written."""
        return np.asarray(open_rows(self.path, "entries")).tolist()

    def _open(self) -> None:
        if self._pid != os.getpid():
            self._offsets = np.array(open_rows(self.path, "offsets"))
            self._start = tensor_start(self.path, "bytes")[1]
            self._file = self.path.open("rb")
            self._pid = os.getpid()

    def image(self, index: int) -> Image.Image:
        self._open()
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        data = os.pread(self._file.fileno(), end - start, self._start + start)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
