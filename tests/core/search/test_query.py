"""Search queries and their images: checked like corpus images, uploads bounded and named
by content."""

from pathlib import Path

import pytest
from PIL import Image

from rar_pipeline.core.corpus.images import ImageCheck
from rar_pipeline.core.search.query import (
    UPLOAD_NAME,
    SearchError,
    SearchQuery,
    check_query_image,
    save_upload,
)


def png(path: Path, size=(16, 16)) -> bytes:
    Image.new("RGB", size, "red").save(path)
    return path.read_bytes()


class TestSearchQuery:
    def test_blank_text_is_no_text(self, tmp_path):
        assert SearchQuery("  hat  ").text == "hat"
        assert SearchQuery("   ", tmp_path / "x.png").text is None

    def test_a_query_needs_something_to_search_with(self):
        with pytest.raises(SearchError, match="needs text, an image, or both"):
            SearchQuery("  ")

    def test_its_modality_follows_what_it_has(self, tmp_path):
        image = tmp_path / "x.png"
        queries = [SearchQuery("a"), SearchQuery(None, image), SearchQuery("a", image)]
        assert [q.modality.value for q in queries] == ["text", "image", "image,text"]

    def test_as_a_record_its_image_is_relative_to_its_folder(self, tmp_path):
        record = SearchQuery("who?", tmp_path / "q.png").record("q0")
        assert (record.img_path, record.split, record.pos_cand_list) == ("q.png", "search", ())


class TestQueryImages:
    def test_a_good_image_is_accepted_as_an_absolute_path(self, tmp_path, monkeypatch):
        png(tmp_path / "q.png")
        monkeypatch.chdir(tmp_path)
        assert check_query_image(Path("q.png")) == tmp_path / "q.png"

    @pytest.mark.parametrize(
        ("make", "words"),
        [
            (lambda p: None, "image missing"),
            (lambda p: p.mkdir(), "not a regular file"),
            (lambda p: p.write_bytes(b"not an image"), "image unreadable"),
        ],
    )
    def test_bad_images_are_refused_with_the_reason(self, tmp_path, make, words):
        make(tmp_path / "q.png")
        with pytest.raises(SearchError, match=words):
            check_query_image(tmp_path / "q.png")

    def test_a_truncated_image_is_refused(self, tmp_path):
        data = png(tmp_path / "whole.png", (64, 64))
        (tmp_path / "q.png").write_bytes(data[: len(data) // 2])
        with pytest.raises(SearchError, match="truncated|unreadable"):
            check_query_image(tmp_path / "q.png")

    def test_a_decompression_bomb_is_refused_before_decoding(self, tmp_path):
        png(tmp_path / "q.png", (200, 200))
        with pytest.raises(SearchError, match="too large"):
            check_query_image(tmp_path / "q.png", ImageCheck(max_pixels=100))


class TestUploads:
    def test_an_upload_is_kept_under_its_content_hash(self, tmp_path):
        data = png(tmp_path / "src.png")
        first = save_upload(data, tmp_path / "up")
        assert first == save_upload(data, tmp_path / "up")
        assert UPLOAD_NAME.match(first.name) and first.read_bytes() == data
        assert sorted(p.name for p in (tmp_path / "up").iterdir()) == [first.name]

    def test_the_stored_suffix_is_the_real_format_not_the_claimed_one(self, tmp_path):
        Image.new("RGB", (8, 8)).save(tmp_path / "src.jpg", format="JPEG")
        assert save_upload((tmp_path / "src.jpg").read_bytes(), tmp_path / "up").suffix == ".jpg"

    @pytest.mark.parametrize(
        ("data", "words"),
        [(b"", "empty"), (b"x" * 101, "limit is 100"), (b"<svg/>", "not usable")],
    )
    def test_bad_uploads_are_refused_and_leave_nothing_behind(self, tmp_path, data, words):
        with pytest.raises(SearchError, match=words):
            save_upload(data, tmp_path / "up", max_bytes=100)
        assert not list((tmp_path / "up").glob("*")) if (tmp_path / "up").exists() else True

    def test_an_upload_with_too_many_pixels_is_refused(self, tmp_path):
        data = png(tmp_path / "big.png", (300, 300))
        with pytest.raises(SearchError, match="not usable"):
            save_upload(data, tmp_path / "up", check=ImageCheck(max_pixels=1000))
        assert not list((tmp_path / "up").iterdir())
