"""Perception from models shipped in PyPI packages: features, OCR, colour names, a cache.

The real models run on a few tiny drawn images; the cache tests count calls to stand-ins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from rar_pipeline.core.enhance import perception
from rar_pipeline.core.enhance.perception import (
    FEATURE_DIM,
    Perceiver,
    TextBox,
    WeightsMismatchError,
    colour_name,
    dominant_colours,
    image_features,
    read_text,
)

WHITE = (255, 255, 255)
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _square(colour=RED, background=WHITE, size: int = 64) -> Image.Image:
    """A filled square in the middle of a plain canvas."""
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), colour)
    return image


def _word(word: str) -> Image.Image:
    image = Image.new("RGB", (160, 60), WHITE)
    ImageDraw.Draw(image).text((10, 15), word, fill=(0, 0, 0), font=ImageFont.load_default(size=26))
    return image


# ---------------------------------------------------------------------------
# colour names


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((255, 0, 0), "red"),
        ((250, 10, 5), "red"),
        ((0, 0, 120), "navy"),
        ((10, 10, 10), "black"),
        ((250, 250, 250), "white"),
        ((0, 250, 0), "green"),
        ((240, 190, 200), "pink"),
    ],
)
def test_a_colour_is_named_by_the_nearest_common_colour(rgb, name):
    assert colour_name(np.array(rgb)) == name


def test_a_red_square_on_white_is_red():
    assert dominant_colours(_square(RED)) == ["red"]


def test_the_background_is_not_counted_as_a_colour_of_the_object():
    assert dominant_colours(_square(BLUE, background=(250, 250, 250))) == ["blue"]
    assert dominant_colours(_square(WHITE, background=(0, 0, 0))) == ["white"]


def test_a_plain_image_is_named_by_its_background():
    assert dominant_colours(Image.new("RGB", (32, 32), WHITE)) == ["white"]


def test_two_objects_of_similar_size_give_two_colours_largest_first():
    image = Image.new("RGB", (100, 50), WHITE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((5, 5, 45, 45), fill=RED)  # 41 x 41
    draw.rectangle((55, 10, 90, 40), fill=BLUE)  # 36 x 31
    assert dominant_colours(image) == ["red", "blue"]
    assert dominant_colours(image, max_colours=1) == ["red"]


def test_text_boxes_are_masked_so_the_ink_of_a_label_does_not_count():
    image = Image.new("RGB", (120, 60), WHITE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((5, 15, 35, 45), fill=RED)  # the object
    draw.rectangle((50, 10, 110, 50), fill=BLUE)  # a label's ink, larger than the object
    label = TextBox("LABEL", (50, 10, 110, 50), 0.99)
    assert dominant_colours(image)[0] == "blue"
    assert dominant_colours(image, [label]) == ["red"]


# ---------------------------------------------------------------------------
# image features (the shipped EfficientNet-Lite0 weights)


def test_image_features_are_one_l2_normalised_1280_vector_per_image():
    feats = image_features([_square(RED), _square(BLUE, size=40)])
    assert feats.shape == (2, FEATURE_DIM)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(feats[0], feats[1])  # different images, different features


def test_image_features_of_no_images_is_an_empty_matrix():
    assert image_features([]).shape == (0, FEATURE_DIM)


def test_weights_that_do_not_match_the_pinned_hash_are_refused(monkeypatch):
    monkeypatch.setattr(perception, "EFFICIENTNET_SHA256", "0" * 64)
    perception._efficientnet.cache_clear()
    try:
        with pytest.raises(WeightsMismatchError, match="refusing to load"):
            perception._efficientnet()
        with pytest.raises(WeightsMismatchError):
            image_features([_square()])
    finally:
        perception._efficientnet.cache_clear()


# ---------------------------------------------------------------------------
# OCR (rapidocr)


@pytest.fixture(scope="module")
def read_word() -> list[TextBox]:
    return read_text(_word("MAPLIX"))


def test_read_text_reads_a_printed_word(read_word):
    assert [b.text for b in read_word] == ["MAPLIX"]


def test_a_text_box_locates_the_word_with_a_confidence(read_word):
    (box,) = read_word
    x0, y0, x1, y1 = box.box
    assert 0 <= x0 < x1 <= 160
    assert 0 <= y0 < y1 <= 60
    assert 0.8 <= box.score <= 1.0


# ---------------------------------------------------------------------------
# Perceiver: computed once per image content, kept in a durable cache


class _Counting:
    """Stand-ins for the models that count how often each is asked."""

    def __init__(self) -> None:
        self.feature_images = 0
        self.ocr_images = 0

    def image_features(self, images, batch_size: int = 32) -> np.ndarray:
        self.feature_images += len(images)
        rng = np.random.default_rng(len(images) + self.feature_images)
        feats = rng.normal(size=(len(images), FEATURE_DIM)).astype(np.float32)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)

    def read_text(self, image, min_score: float = 0.8) -> list[TextBox]:
        self.ocr_images += 1
        return [TextBox("MAPLIX", (40, 40, 60, 60), 0.99)]


@pytest.fixture
def counting(monkeypatch) -> _Counting:
    fake = _Counting()
    monkeypatch.setattr(perception, "image_features", fake.image_features)
    monkeypatch.setattr(perception, "read_text", fake.read_text)
    return fake


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "img" / "red.png", tmp_path / "img" / "blue.png"]
    paths[0].parent.mkdir()
    _square(RED).save(paths[0])
    _square(BLUE).save(paths[1])
    return paths


def test_a_second_perceiver_on_the_same_cache_reads_what_the_first_computed(
    tmp_path: Path, images: list[Path], counting: _Counting
):
    first = Perceiver(tmp_path / "cache")
    before = first.perceive(images).items
    first.flush()
    assert (counting.feature_images, counting.ocr_images) == (2, 2)

    second = Perceiver(tmp_path / "cache")
    after = second.perceive(images).items
    assert (counting.feature_images, counting.ocr_images) == (2, 2)  # nothing recomputed
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        assert a.text == b.text == ("MAPLIX",)
        assert a.colours == b.colours
    assert [p.colours for p in after] == [("red",), ("blue",)]


def test_perceiving_computes_each_image_content_once(
    tmp_path: Path, images: list[Path], counting: _Counting
):
    copy = tmp_path / "img" / "red_copy.png"
    copy.write_bytes(images[0].read_bytes())
    perceiver = Perceiver(tmp_path / "cache")
    out = perceiver.perceive([images[0], copy, images[1]]).items
    assert counting.feature_images == 2
    assert counting.ocr_images == 2
    np.testing.assert_array_equal(out[0].features, out[1].features)
    perceiver.perceive(images)  # again, in the same process
    assert (counting.feature_images, counting.ocr_images) == (2, 2)


def test_features_come_back_in_the_order_asked(
    tmp_path: Path, images: list[Path], counting: _Counting
):
    perceiver = Perceiver(tmp_path / "cache")
    forward = perceiver.features(images).vectors
    backward = perceiver.features(images[::-1]).vectors
    assert forward.shape == (2, FEATURE_DIM)
    np.testing.assert_array_equal(forward[::-1], backward)
    assert counting.feature_images == 2


def test_a_perceiver_without_ocr_reads_no_text_but_still_names_colours(
    tmp_path: Path, images: list[Path], counting: _Counting
):
    out = Perceiver(tmp_path / "cache", ocr=False).perceive(images).items
    assert counting.ocr_images == 0
    assert [p.text for p in out] == [(), ()]
    assert [p.colours for p in out] == [("red",), ("blue",)]


def test_a_perceiver_without_a_cache_dir_remembers_within_the_process_only(
    tmp_path: Path, images: list[Path], counting: _Counting
):
    perceiver = Perceiver()
    perceiver.perceive(images)
    perceiver.perceive(images)
    assert (counting.feature_images, counting.ocr_images) == (2, 2)
    Perceiver().perceive(images)
    assert (counting.feature_images, counting.ocr_images) == (4, 4)
    assert not (tmp_path / "cache").exists()


def test_features_of_no_paths_is_an_empty_matrix(tmp_path: Path, counting: _Counting):
    assert Perceiver(tmp_path / "cache").features([]).vectors.shape == (0, FEATURE_DIM)
    assert counting.feature_images == 0


# ---------------------------------------------------------------------------
# bounded images (issue 19): a bad image fails alone; caches of unchanged images stay valid


def test_cache_keys_are_unchanged_for_images_within_the_canvas_and_tagged_for_padded_ones(
    tmp_path: Path, images: list[Path], counting: _Counting
):
    banner = tmp_path / "img" / "banner.png"
    Image.new("RGB", (600, 60), WHITE).save(banner)  # 10:1, padded onto a 4:1 canvas
    perceiver = Perceiver(tmp_path / "cache")
    perceiver.perceive([images[0], banner])
    perceiver.flush()
    store = Perceiver(tmp_path / "cache").features_store
    square, padded = perception.file_hash(images[0]), perception.file_hash(banner)
    version, tagged = perception.PERCEPTION_VERSION, perception.PERCEPTION_VERSION + "+canvas4"
    assert perception.CANVAS_TAG == "+canvas4" and version == "offline-2"
    assert store.get(f"{version}:{square}") is not None  # the key an older run wrote
    assert store.get(f"{tagged}:{padded}") is not None and store.get(f"{version}:{padded}") is None


def test_an_unreadable_image_fails_alone_with_its_error(
    tmp_path: Path, images: list[Path], counting: _Counting
):
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:60])  # the header, cut short
    missing = tmp_path / "img" / "gone.png"
    seen = Perceiver().perceive([images[0], broken, missing, images[1]])
    assert [p is not None for p in seen.items] == [True, False, False, True]
    assert isinstance(seen.failed[1], OSError) and "truncated" in str(seen.failed[1])
    assert isinstance(seen.failed[2], FileNotFoundError)
    assert [p.colours for p in seen.items if p] == [("red",), ("blue",)]


def test_features_decode_a_bounded_number_of_images_at_a_time(
    tmp_path: Path, counting: _Counting, monkeypatch
):
    batches: list[int] = []
    real = counting.image_features
    monkeypatch.setattr(
        perception,
        "image_features",
        lambda ims, batch_size=32: batches.append(len(ims)) or real(ims),
    )
    paths = []
    for i in range(perception.FEATURE_BATCH + 3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), (i, 0, 0)).save(paths[-1])
    assert Perceiver().features(paths).vectors.shape == (len(paths), FEATURE_DIM)
    assert batches == [perception.FEATURE_BATCH, 3]
