"""Image checks: each level finds the problems it can afford to look for, and no more."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel, check_image, thumbnail
from rar_pipeline.core.corpus.records import Reason

DECODE = ImageCheckLevel.DECODE
HEADER = ImageCheckLevel.HEADER
EXISTS = ImageCheckLevel.EXISTS
OFF = ImageCheckLevel.OFF
IMAGE_REASONS = {
    Reason.IMAGE_MISSING,
    Reason.IMAGE_UNREADABLE,
    Reason.IMAGE_TRUNCATED,
    Reason.IMAGE_TOO_LARGE,
}


def _patterned(size: tuple[int, int]) -> Image.Image:
    """A deterministic image that does not compress away (so half its bytes is pixel data)."""
    width, height = size
    data = bytes((i * 7 + i // 3) % 251 for i in range(width * height * 3))
    return Image.frombytes("RGB", size, data)


@pytest.fixture
def good_png(tmp_path: Path) -> Path:
    path = tmp_path / "good.png"
    _patterned((64, 48)).save(path)
    return path


@pytest.fixture
def truncated_png(tmp_path: Path, good_png: Path) -> Path:
    data = good_png.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("this is plain text, not a PNG\n")
    return path


@pytest.fixture
def missing(tmp_path: Path) -> Path:
    return tmp_path / "gone.png"


def _check(path: Path, level: ImageCheckLevel, max_pixels: int = 40_000_000):
    return check_image(path, ImageCheck(level=level, max_pixels=max_pixels))


def test_the_default_check_decodes_with_a_forty_megapixel_limit():
    assert ImageCheck() == ImageCheck(level=DECODE, max_pixels=40_000_000)


@pytest.mark.parametrize("level", list(ImageCheckLevel))
def test_a_good_png_passes_at_every_level(good_png, level):
    assert _check(good_png, level) is None


@pytest.mark.parametrize("level", list(ImageCheckLevel))
def test_a_good_jpeg_passes_at_every_level(tmp_path, level):
    path = tmp_path / "photo.jpg"
    _patterned((32, 32)).save(path, quality=80)
    assert _check(path, level) is None


# ---------------------------------------------------------------------------
# truncated files


def test_a_truncated_png_is_truncated_under_a_full_decode(truncated_png):
    reason, detail = _check(truncated_png, DECODE)
    assert reason == Reason.IMAGE_TRUNCATED
    assert "truncated" in detail.lower()


@pytest.mark.parametrize("level", [HEADER, EXISTS, OFF])
def test_a_truncated_png_passes_when_pixels_are_not_decoded(truncated_png, level):
    assert _check(truncated_png, level) is None


# ---------------------------------------------------------------------------
# files that are not images


@pytest.mark.parametrize("level", [DECODE, HEADER])
def test_a_non_image_file_is_unreadable_once_it_is_opened(not_an_image, level):
    reason, detail = _check(not_an_image, level)
    assert reason == Reason.IMAGE_UNREADABLE
    assert "cannot identify image file" in detail


@pytest.mark.parametrize("level", [EXISTS, OFF])
def test_a_non_image_file_passes_when_it_is_not_opened(not_an_image, level):
    assert _check(not_an_image, level) is None


def test_an_empty_file_is_unreadable(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert _check(path, HEADER)[0] == Reason.IMAGE_UNREADABLE


# ---------------------------------------------------------------------------
# missing files


@pytest.mark.parametrize("level", [DECODE, HEADER, EXISTS])
def test_a_missing_file_is_missing_at_every_level_but_off(missing, level):
    assert _check(missing, level) == (Reason.IMAGE_MISSING, "file not found")


def test_a_missing_file_passes_when_checks_are_off(missing):
    assert _check(missing, OFF) is None


def test_a_folder_where_an_image_should_be_is_unreadable(tmp_path):
    folder = tmp_path / "images.png"
    folder.mkdir()
    assert _check(folder, EXISTS) == (Reason.IMAGE_UNREADABLE, "not a regular file")


def test_a_fifo_named_like_an_image_is_refused_without_opening_it(tmp_path):
    import os

    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    for level in (EXISTS, HEADER, DECODE):
        assert _check(fifo, level) == (Reason.IMAGE_UNREADABLE, "not a regular file")


# ---------------------------------------------------------------------------
# the pixel limit


@pytest.mark.parametrize("level", [DECODE, HEADER])
def test_an_image_over_max_pixels_is_too_large(good_png, level):
    assert _check(good_png, level, max_pixels=64 * 48 - 1) == (
        Reason.IMAGE_TOO_LARGE,
        f"64x48 = 3072 pixels > {64 * 48 - 1}",
    )


@pytest.mark.parametrize("level", [DECODE, HEADER])
def test_an_image_exactly_at_max_pixels_passes(good_png, level):
    assert _check(good_png, level, max_pixels=64 * 48) is None


@pytest.mark.parametrize("level", [EXISTS, OFF])
def test_the_pixel_limit_needs_the_header_to_be_read(good_png, level):
    assert _check(good_png, level, max_pixels=1) is None


def test_the_pixel_limit_is_checked_before_decoding(truncated_png):
    # a truncated image over the limit is refused for its size, without decoding it
    reason, _ = _check(truncated_png, DECODE, max_pixels=100)
    assert reason == Reason.IMAGE_TOO_LARGE


def test_pillows_own_decompression_bomb_refusal_is_too_large(good_png, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above twice this
    reason, detail = _check(good_png, HEADER)
    assert reason == Reason.IMAGE_TOO_LARGE
    assert "3072" in detail


# ---------------------------------------------------------------------------
# the reasons themselves


def test_every_reason_returned_is_an_image_reason(good_png, truncated_png, not_an_image, missing):
    reasons = set()
    for path in (good_png, truncated_png, not_an_image, missing):
        for level in ImageCheckLevel:
            for max_pixels in (100, 40_000_000):
                problem = _check(path, level, max_pixels)
                if problem is not None:
                    reason, detail = problem
                    assert isinstance(reason, str) and isinstance(detail, str) and detail
                    reasons.add(Reason(reason))
    assert reasons == IMAGE_REASONS


def test_a_thumbnail_keeps_the_aspect_within_its_size(tmp_path):
    Image.new("RGBA", (400, 100), (255, 0, 0, 128)).save(tmp_path / "wide.png")
    data = thumbnail(tmp_path / "wide.png", 100)
    (tmp_path / "thumb.png").write_bytes(data)
    with Image.open(tmp_path / "thumb.png") as small:
        assert (small.size, small.mode) == ((100, 25), "RGB")
    assert thumbnail(tmp_path / "wide.png", 50, "JPEG").startswith(b"\xff\xd8")


def test_a_thumbnail_refuses_what_the_check_refuses(tmp_path, truncated_png):
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="image_too_large"):
        thumbnail(tmp_path / "big.png", 64, check=ImageCheck(max_pixels=1000))
    with pytest.raises(ValueError, match="image_truncated"):
        thumbnail(truncated_png, 64)
    with pytest.raises(ValueError, match="image_missing"):
        thumbnail(tmp_path / "nothing.png", 64)
