"""Image checks (missing, unreadable, truncated, too large) and thumbnails of checked images.

Validation checks every corpus image; search checks query images and uploads the same way.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from PIL import Image


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
        strict_paths: resolve symlinks too: an image path whose real file is outside the
            data root is refused (`mbeir.resolve_in_root(strict=True)`).
    """

    level: ImageCheckLevel = ImageCheckLevel.DECODE
    max_pixels: int = 40_000_000
    strict_paths: bool = False


def check_image(path: Path, check: ImageCheck) -> tuple[str, str] | None:
    """Return (reason, detail) when the image fails `check`, else None.

    The reason is one of the image values of `records.Reason`.
    """
    if check.level == ImageCheckLevel.OFF:
        return None
    if not path.is_file():
        if path.exists():  # a directory, FIFO or device: opening it could block forever
            return "image_unreadable", "not a regular file"
        return "image_missing", "file not found"
    if check.level == ImageCheckLevel.EXISTS:
        return None
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > check.max_pixels:
                    return (
                        "image_too_large",
                        f"{width}x{height} = {width * height} pixels > {check.max_pixels}",
                    )
                if check.level == ImageCheckLevel.DECODE:
                    im.load()
    except Image.DecompressionBombError as exc:
        return "image_too_large", str(exc)
    except OSError as exc:
        message = str(exc)
        if "truncated" in message.lower():
            return "image_truncated", message
        return "image_unreadable", message
    except (ValueError, SyntaxError) as exc:  # PIL raises these for some corrupt headers
        return "image_unreadable", str(exc)
    return None


def thumbnail(path: Path, size: int, fmt: str = "PNG", check: ImageCheck | None = None) -> bytes:
    """A copy of an image whose longest side is at most `size`, encoded as `fmt`.

    Raises:
        ValueError: the image fails `check` (default: decoded, within the pixel bound).
    """
    problem = check_image(Path(path), check or ImageCheck())
    if problem is not None:
        raise ValueError(f"{path}: {problem[0]} ({problem[1]})")
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format=fmt)
    return out.getvalue()
