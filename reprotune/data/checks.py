"""The checks every image file passes before the pipeline uses it: clean applies them to data/raw, predict to
any file it is given and the served model to every image it receives, so that all three accept, refuse and
decode an image alike. A refused file raises Rejected
with a reason code and a detail."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from reprotune.data.images import to_rgb, upright
from reprotune.pipeline.params import InputChecks

# Large JPEGs are decoded at a reduced scale (libjpeg's DCT scaling: still every byte is read, so truncation
# is still caught) down to no less than this side; the hashes need no more.
CHECK_SIDE = 512


class Rejected(Exception):
    """`str()` of it is the reason code, then the detail when there is one: what a report row says."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    rgb: Image.Image
    width: int  # the true size, before any reduced-scale decoding
    height: int
    mode: str  # as stored, before conversion to RGB
    orientation_note: str | None  # what EXIF orientation did, if anything


def open_checked(source: Path | bytes, rules: InputChecks) -> Image.Image:
    """Open a file or an image's bytes (header only) and apply the checks that need no decoding."""
    if (len(source) if isinstance(source, bytes) else source.stat().st_size) == 0:
        raise Rejected("empty_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Rejected("decompression_bomb", str(error)) from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise Rejected("not_an_image", str(error) or type(error).__name__) from None
    if image.format not in rules.formats:
        image.close()
        raise Rejected(
            "format_not_allowed", f"{image.format}; clean.formats allows {', '.join(rules.formats)}"
        )
    width, height = image.size
    if width * height > rules.max_pixels:
        image.close()
        raise Rejected("too_many_pixels", f"{width}x{height} > clean.max_pixels={rules.max_pixels}")
    return image


def decode_checked(path: Path | bytes, rules: InputChecks, side: int) -> Decoded:
    """Decode a file (or an image's bytes) fully under the rules (a JPEG at the least reduced scale that keeps `side` pixels), upright
    and in RGB, or raise Rejected with the reason."""
    with open_checked(path, rules) as image:
        width, height = image.size
        mode = image.mode
        if image.format == "JPEG":
            image.draft("RGB", (side, side))
        try:
            image.load()
            oriented, orientation_note = upright(image)
            rgb = to_rgb(oriented, tuple(rules.background))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise Rejected("truncated_or_corrupt", str(error) or type(error).__name__) from None
    if min(width, height) < rules.min_side:
        raise Rejected("too_small", f"{width}x{height}; clean.min_side={rules.min_side}")
    if max(width, height) / min(width, height) > rules.max_aspect_ratio:
        raise Rejected("extreme_aspect", f"{width}x{height}; clean.max_aspect_ratio={rules.max_aspect_ratio}")
    return Decoded(rgb, width, height, mode, orientation_note)


def pixels_sha256(rgb: Image.Image) -> str:
    """The digest of an image's decoded pixels (decoded at CHECK_SIDE or more): equal for the same picture
    in two files, or in two formats that store it losslessly."""
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
