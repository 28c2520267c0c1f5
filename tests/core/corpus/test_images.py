"""Image checks: each level finds the problems it can afford to look for, and no more."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFile

from rar_pipeline.core.corpus.images import (
    CANVAS_ASPECT,
    MAX_IMAGE_SIDE,
    ImageCheck,
    ImageCheckLevel,
    ImageRefused,
    border_colour,
    check_image,
    image_data_url,
    load_image,
    needs_canvas,
    thumbnail,
)
from rar_pipeline.core.corpus.records import Reason
from rar_pipeline.core.enhance.perception import dominant_colours
from tests.probe_images import DETAILS, PROBES, write_probes

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


def test_the_default_check_decodes_with_a_forty_megapixel_and_twenty_to_one_limit():
    assert ImageCheck() == ImageCheck(level=DECODE, max_pixels=40_000_000, max_aspect=20)


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


# ---------------------------------------------------------------------------
# thin images (issue 19): refused from the header by aspect ratio


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, Path]:
    return write_probes(tmp_path_factory.mktemp("probes"))


def test_the_probes_are_small_real_pngs(probes):
    for name, (width, height) in PROBES.items():
        assert probes[name].stat().st_size < 100_000
        with Image.open(probes[name]) as image:
            assert (image.format, image.size) == ("PNG", (width, height))
    assert 39_999_999 <= ImageCheck().max_pixels  # the tall one passes the pixel bound


@pytest.mark.parametrize("name", list(PROBES))
@pytest.mark.parametrize("level", [DECODE, HEADER])
def test_a_thin_image_is_refused_for_its_aspect_ratio(probes, name, level):
    assert _check(probes[name], level) == (Reason.IMAGE_ASPECT_RATIO, DETAILS[name])


@pytest.mark.parametrize("level", [EXISTS, OFF])
def test_the_aspect_bound_needs_the_header_to_be_read(probes, level):
    assert _check(probes["1x2000"], level) is None


@pytest.mark.parametrize("name", list(PROBES))
def test_a_thin_image_is_refused_before_any_pixel_is_decoded(probes, name, monkeypatch):
    def decode(self):  # pragma: no cover - failing is the point
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    assert _check(probes[name], DECODE)[0] == Reason.IMAGE_ASPECT_RATIO
    for opener in (load_image, image_data_url):
        with pytest.raises(ImageRefused) as refused:
            opener(probes[name])
        assert (refused.value.reason, refused.value.detail) == ("image_aspect_ratio", DETAILS[name])
        assert isinstance(refused.value, ValueError) and str(probes[name]) in str(refused.value)


def test_the_aspect_bound_is_a_setting_and_its_edge_passes(tmp_path, probes):
    assert check_image(probes["10x500"], ImageCheck(max_aspect=50)) is None
    Image.new("RGB", (7, 140)).save(tmp_path / "edge.png")  # exactly 20:1
    assert _check(tmp_path / "edge.png", DECODE) is None
    Image.new("RGB", (7, 141)).save(tmp_path / "over.png")
    assert _check(tmp_path / "over.png", DECODE) == (
        Reason.IMAGE_ASPECT_RATIO,
        "7x141: aspect ratio 20.1:1 > 20:1",
    )


def test_too_many_pixels_is_reported_before_the_aspect_ratio(good_png):
    assert _check(good_png, DECODE, max_pixels=10)[0] == Reason.IMAGE_TOO_LARGE


def test_a_thumbnail_refuses_a_thin_image(probes):
    with pytest.raises(ValueError, match=r"image_aspect_ratio \(1x2000: aspect ratio 2000:1"):
        thumbnail(probes["1x2000"], 64)


# ---------------------------------------------------------------------------
# what a model receives: load_image's bounds


def _before(path: Path) -> Image.Image:
    """What `load_image` returned before the canvas existed (the reference)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if max(rgb.size) > MAX_IMAGE_SIDE:
        rgb.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return rgb


@pytest.mark.parametrize(
    ("size", "mode", "fmt"),
    [
        ((160, 136), "RGB", "PNG"),
        ((160, 136), "P", "PNG"),
        ((3000, 2000), "RGB", "JPEG"),
        ((64, 256), "L", "PNG"),
        ((1344, 336), "RGBA", "PNG"),
    ],  # fmt: skip
)
def test_an_image_within_the_canvas_aspect_comes_out_exactly_as_before(tmp_path, size, mode, fmt):
    path = tmp_path / f"image.{fmt.lower()}"
    image = _patterned(size).convert(mode)
    image.save(path, format=fmt)
    loaded = load_image(path)
    assert (loaded.mode, loaded.size) == ("RGB", _before(path).size)
    assert loaded.tobytes() == _before(path).tobytes()


@pytest.mark.parametrize(
    ("size", "canvas"),
    [
        ((100, 2000), (336, 1344)),
        ((2000, 100), (1344, 336)),
        ((7, 140), (35, 140)),
        ((41, 165), (42, 165)),
        ((5000, 300), (1344, 336)),
    ],  # fmt: skip
)
def test_a_thin_image_is_padded_onto_a_bounded_canvas(tmp_path, size, canvas):
    Image.new("RGB", size, (30, 60, 200)).save(tmp_path / "thin.png")
    loaded = load_image(tmp_path / "thin.png")
    assert (loaded.mode, loaded.size) == ("RGB", canvas)
    assert max(loaded.size) <= MAX_IMAGE_SIDE
    assert max(loaded.size) <= CANVAS_ASPECT * min(loaded.size)
    assert needs_canvas(size) and not needs_canvas(loaded.size)


def test_the_canvas_is_the_images_border_colour_and_the_image_is_centred(tmp_path):
    image = Image.new("RGB", (60, 600), (250, 250, 250))
    ImageDraw.Draw(image).rectangle((10, 250, 50, 350), fill=(200, 0, 0))
    image.save(tmp_path / "tall.png")
    loaded = load_image(tmp_path / "tall.png")
    assert loaded.size == (150, 600)
    assert loaded.getpixel((0, 0)) == loaded.getpixel((149, 599)) == (250, 250, 250)
    assert loaded.getpixel((75, 300)) == (200, 0, 0)  # the object, in the middle
    assert loaded.crop((45, 0, 105, 600)).tobytes() == image.tobytes()
    assert dominant_colours(loaded) == ["red"]  # the padding reads as background


def test_the_border_colour_is_the_most_common_one_along_the_border():
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 39, 3), fill=(0, 0, 255))  # one side of four
    assert border_colour(image) == (255, 255, 255)


# ---------------------------------------------------------------------------
# what the openai and vllm backends send: image_data_url


def _decoded(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    assert head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_a_small_png_or_jpeg_is_sent_as_its_own_bytes(good_png, tmp_path):
    assert image_data_url(good_png) == (
        "data:image/png;base64," + base64.b64encode(good_png.read_bytes()).decode()
    )
    _patterned((32, 32)).save(tmp_path / "photo.jpg", quality=80)
    assert image_data_url(tmp_path / "photo.jpg").startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize(("size", "sent"), [((100, 2000), (336, 1344)), ((20, 200), (50, 200))])
def test_a_thin_image_is_sent_as_the_bounded_canvas(tmp_path, size, sent):
    Image.new("RGB", size, (30, 60, 200)).save(tmp_path / "thin.png")
    url = image_data_url(tmp_path / "thin.png")
    assert url.startswith("data:image/png;base64,")
    assert _decoded(url).size == sent
