"""The one opener of images: bounds checked from the header, pixels bounded for every model.

Every path that opens an image goes through here: ingest validation (`check_image`),
search query images and uploads (`check_image`), perception (features, OCR, colours), every
VLM backend (`load_image`, `image_data_url`), the encoders, and thumbnails.

Refused from the header, before any pixel is decoded (`ImageRefused`, whose reason is a
`records.Reason` value, the same one validation quarantines the row with):

- more than `ImageCheck.max_pixels` pixels (decompression bombs): `image_too_large`;
- a long side more than `ImageCheck.max_aspect` times the short side: `image_aspect_ratio`.
  Models stretch the short side: RapidOCR scales it up to 736 px before detection, so a
  94-byte 1 x 2000 PNG asked it for 7.6 GiB and a 78 KB 1 x 39,999,999 PNG (within the
  pixel bound) for over 20 GB.

Budget of one image:

- Decoding holds the image in its own mode (at most 4 bytes a pixel) and, while
  `load_image` converts it, one RGB copy (4 bytes a pixel): at most max_pixels x 8 bytes,
  320 MB at the 40M default, for as long as the conversion takes.
- What a model or OCR receives (`load_image`) is RGB, its longer side at most
  `MAX_IMAGE_SIDE` (1344) and its long side at most `CANVAS_ASPECT` (4) times its short
  side: an image thinner than that is padded onto a canvas of its own border colour. At
  most 1344 x 1344 x 4 bytes = 7 MB.
- OCR, which stretches the short side to 736 px, then sees at most 736 x 2944 px
  (736 x 736 x CANVAS_ASPECT): a 2.2 M-pixel detection input, whatever the file. Measured,
  OCR + features + colours of such a canvas raise peak RSS by ~0.4 GB over the loaded
  models, as much as a 1344 x 1344 photo (benchmarks/RESULTS.md, issue 19).

Images within `CANVAS_ASPECT` come out exactly as before the canvas existed (RGB, shrunk to
`MAX_IMAGE_SIDE`), so caches of what models read off them stay valid.
"""

from __future__ import annotations

import base64
import errno
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image

# Images reach models at most this big on their longer side: VLM processors resize anyway,
# and a 6000-pixel photo as a data URL would be tens of MB per request.
MAX_IMAGE_SIDE = 1344
# The thinnest image a model or OCR is handed (long side / short side); thinner images are
# padded. 4:1 keeps OCR's detection input within 736 x 2944 px (see the module docstring)
# while a banner or a wide panorama keeps its content at a legible size.
CANVAS_ASPECT = 4
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}


class ImageCheckLevel(StrEnum):
    """How much work validation spends on each image."""

    DECODE = "decode"  # open and decode every pixel: catches truncated files
    HEADER = "header"  # open the header: size and format, not the pixel data
    EXISTS = "exists"  # the file exists; for pools too large to open every image
    OFF = "off"


@dataclass(frozen=True)
class ImageCheck:
    """Image validation settings.

    Attributes:
        level: how deep to look (see `ImageCheckLevel`).
        max_pixels: width * height above which an image is refused (decompression bombs,
            or images no VLM should be handed whole).
        max_aspect: long side / short side above which an image is refused: a thin image
            stretched by a model's resize (OCR makes its short side 736 px) would ask for
            gigabytes. Thinner than `CANVAS_ASPECT` but within this, it is padded.
        strict_paths: resolve symlinks too: an image path whose real file is outside the
            data root is refused (`mbeir.resolve_in_root(strict=True)`).
    """

    level: ImageCheckLevel = ImageCheckLevel.DECODE
    max_pixels: int = 40_000_000
    max_aspect: float = 20
    strict_paths: bool = False


class ImageRefused(ValueError):
    """An image no model is handed, and why.

    Attributes:
        path: the image.
        reason: a `records.Reason` image value (image_too_large, image_aspect_ratio, ...).
        detail: what was found, e.g. "1x2000: aspect ratio 2000:1 > 20:1".
    """

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        # the reason first: failure counts group errors by their text up to the first colon
        super().__init__(f"{reason}: {path}: {detail}")
        self.path, self.reason, self.detail = Path(path), reason, detail


def _ratio(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _require_file(path: Path) -> None:
    if path.is_file():
        return
    if path.exists():  # a directory, FIFO or device: opening it could block forever
        raise ImageRefused(path, "image_unreadable", "not a regular file")
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


def _check_size(path: Path, size: tuple[int, int], check: ImageCheck) -> None:
    width, height = size
    if width * height > check.max_pixels:
        detail = f"{width}x{height} = {width * height} pixels > {check.max_pixels}"
        raise ImageRefused(path, "image_too_large", detail)
    long, short = max(size), min(size)
    if short < 1:
        raise ImageRefused(path, "image_unreadable", f"{width}x{height}: no pixels")
    if long > check.max_aspect * short:
        ratio = f"aspect ratio {_ratio(long / short)}:1 > {_ratio(check.max_aspect)}:1"
        raise ImageRefused(path, "image_aspect_ratio", f"{width}x{height}: {ratio}")


@contextmanager
def _pil_errors(path: Path) -> Iterator[None]:
    """PIL's bomb error and its ValueErrors for corrupt files, as refusals.

    OSErrors pass as they are (missing, not an image, truncated): callers already tell
    those apart, and some report their type.
    """
    try:
        with warnings.catch_warnings():
            # The bounds here are tighter than PIL's; its bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as exc:
        raise ImageRefused(path, "image_too_large", str(exc)) from None
    except ImageRefused:
        raise
    except (ValueError, SyntaxError) as exc:  # PIL raises these for some corrupt headers
        raise ImageRefused(path, "image_unreadable", str(exc)) from None


def open_bounded(path: Path, check: ImageCheck | None = None) -> Image.Image:
    """`PIL.Image.open` (the header only) that refuses what `check` bounds.

    Raises:
        ImageRefused: over `max_pixels` or `max_aspect`, not a regular file, or a header
            PIL rejects as corrupt.
        OSError: missing (FileNotFoundError) or not an image (UnidentifiedImageError).
    """
    path = Path(path)
    check = check or ImageCheck()
    _require_file(path)
    with _pil_errors(path):
        image = Image.open(path)
    try:
        _check_size(path, image.size, check)
    except ImageRefused:
        image.close()
        raise
    return image


def bounded_size(path: Path, check: ImageCheck | None = None) -> tuple[int, int]:
    """The image's (width, height) from its header, once it is within bounds.

    Raises:
        ImageRefused, OSError: as `open_bounded`.
    """
    with open_bounded(path, check) as image:
        return image.size


def needs_canvas(size: tuple[int, int]) -> bool:
    """Whether `load_image` pads an image of this (header) size onto a canvas."""
    return max(size) > CANVAS_ASPECT * min(size)


def problem_of(exc: BaseException) -> tuple[str, str]:
    """(reason, detail) of an error from opening or decoding an image."""
    if isinstance(exc, ImageRefused):
        return exc.reason, exc.detail
    if isinstance(exc, FileNotFoundError):
        return "image_missing", "file not found"
    message = str(exc)
    if "truncated" in message.lower():
        return "image_truncated", message
    return "image_unreadable", message


def check_image(path: Path, check: ImageCheck) -> tuple[str, str] | None:
    """Return (reason, detail) when the image fails `check`, else None.

    The reason is one of the image values of `records.Reason`.
    """
    if check.level == ImageCheckLevel.OFF:
        return None
    path = Path(path)
    try:
        if check.level == ImageCheckLevel.EXISTS:
            _require_file(path)
            return None
        with open_bounded(path, check) as image:
            if check.level == ImageCheckLevel.DECODE:
                with _pil_errors(path):
                    image.load()
    except (ImageRefused, OSError) as exc:
        return problem_of(exc)
    return None


def _decode_rgb(path: Path, check: ImageCheck | None = None) -> tuple[Image.Image, bool]:
    """The whole image as RGB, and whether its header size `needs_canvas`."""
    with open_bounded(path, check) as image:
        with _pil_errors(path):
            return image.convert("RGB"), needs_canvas(image.size)


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """The most common colour along an RGB image's border (what reads as background).

    Colours are grouped as `perception.dominant_colours` groups them to find the
    background (8 levels a channel); the group's mean keeps a pure white border white.
    """
    rgb = np.asarray(image)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int64)
    groups = border // 8
    keys = (groups[:, 0] * 32 + groups[:, 1]) * 32 + groups[:, 2]
    members = border[keys == np.bincount(keys).argmax()]
    red, green, blue = (int(v) for v in members.mean(axis=0).round())
    return red, green, blue


def on_canvas(image: Image.Image) -> Image.Image:
    """An RGB image padded, centred, to at most `CANVAS_ASPECT`: 1 with its border colour."""
    width, height = image.size
    short = -(-max(width, height) // CANVAS_ASPECT)  # the ceiling
    size = (max(width, short), max(height, short))
    if size == image.size:
        return image
    canvas = Image.new("RGB", size, border_colour(image))
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def load_image(path: Path, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """The image as a model or OCR receives it (see the module docstring for the bounds).

    RGB, shrunk so its longer side is at most `max_side`, and padded with its border
    colour when its long side is over `CANVAS_ASPECT` times its short side.

    Raises:
        ImageRefused: too many pixels, too thin, not a regular file, or corrupt.
        OSError: missing, not an image, or truncated.
    """
    image, padded = _decode_rgb(Path(path))
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    return on_canvas(image) if padded else image


def image_data_url(path: Path, max_side: int = MAX_IMAGE_SIDE) -> str:
    """The image as a `data:` URL, for HTTP and vLLM backends.

    The file's own bytes when it is PNG or JPEG, within `max_side` and within
    `CANVAS_ASPECT`; otherwise `load_image`'s bounded canvas, as PNG.

    Raises:
        ImageRefused, OSError: as `load_image`.
    """
    path = Path(path)
    with open_bounded(path) as image:
        size, mime = image.size, _MIME.get((image.format or "").upper())
    if mime is not None and max(size) <= max_side and not needs_canvas(size):
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
    buf = io.BytesIO()
    load_image(path, max_side).save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def thumbnail(path: Path, size: int, fmt: str = "PNG", check: ImageCheck | None = None) -> bytes:
    """A copy of an image whose longest side is at most `size`, encoded as `fmt`.

    Raises:
        ValueError: the image fails `check` (default: within the pixel and aspect bounds,
            and decoding whole); the message names the reason.
    """
    path = Path(path)
    try:
        image, _ = _decode_rgb(path, check)
    except (ImageRefused, OSError) as exc:
        reason, detail = problem_of(exc)
        raise ValueError(f"{path}: {reason} ({detail})") from None
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()
