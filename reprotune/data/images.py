"""How an image file becomes an RGB picture: one rule for the clean stage (which checks it) and for every
stage that later reads pixels (featurize, finetune, evaluate), so what passed cleaning is what they see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

Background = tuple[int, int, int]

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled (not clipped) into 0..255."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and pixels.max(initial=0) > 255):
        pixels = pixels / 257.0  # 65535 -> 255
    elif image.mode == "F" and pixels.max(initial=0) <= 1.0:
        pixels = pixels * 255.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background: Background) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels are composited onto `background`, not dropped."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in {"I", "F"}:
        image = _to_eight_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def upright(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Apply the EXIF orientation, and say what was done. A corrupt EXIF block leaves the image as stored
    rather than failing it: the pixels are still fine."""
    try:
        orientation = image.getexif().get(0x0112, 1)
        if orientation in (None, 1):
            return image, None
        return ImageOps.exif_transpose(image), f"exif_oriented: orientation {orientation}"
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for malformed EXIF
        return image, f"exif_ignored: {type(error).__name__}: {error}"


def load_rgb(path: Path, background: Background, min_side: int | None = None) -> Image.Image:
    """Decode a file the clean stage has already accepted.

    With `min_side`, a JPEG at least twice that size on both sides is decoded at a reduced scale (libjpeg's
    DCT scaling by 1/2, 1/4 or 1/8) that keeps both sides >= min_side: a 12-megapixel photo that will be
    resized to 182 pixels decodes about 8x faster. Smaller images decode exactly as without it.
    """
    with Image.open(path) as image:
        if min_side is not None:
            image.draft(None, (min_side, min_side))
        image.load()
        return to_rgb(upright(image)[0], background)
