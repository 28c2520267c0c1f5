"""A decompression bomb (a small file that decodes to an enormous image) is refused by every
path that opens an image, from its header, before any pixel is decoded.

The bomb here is 8000 x 8000 pixels (64M): over the corpus bound (40M pixels,
`ImageCheck.max_pixels`) and under PIL's own bomb limit (~89M), so the project's bound is
what refuses it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from rar_pipeline.core.corpus.images import (
    ImageCheck,
    ImageRefused,
    check_image,
    image_data_url,
    load_image,
    thumbnail,
)
from rar_pipeline.core.enhance.prompts import QUERY_CAPTION
from rar_pipeline.core.enhance.vlm.offline import OfflineVLM
from rar_pipeline.core.retrieval.embedding import embed_robustly
from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.search.query import SearchError, check_query_image, save_upload


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (8000, 8000)).save(path, optimize=True)
    assert path.stat().st_size < 200_000 and 8000 * 8000 > ImageCheck.max_pixels
    return path


def test_validation_quarantines_it(bomb):
    assert check_image(bomb, ImageCheck())[0] == "image_too_large"


@pytest.mark.parametrize("opener", [load_image, image_data_url])
def test_the_vlm_backends_and_encoders_refuse_it(bomb, opener):
    # load_image: perception, the transformers backend, CLIP and vlm-embed encoders;
    # image_data_url: the openai and vllm backends
    with pytest.raises(ImageRefused, match="image_too_large") as refused:
        opener(bomb)
    assert refused.value.reason == "image_too_large"


def test_the_offline_vlm_fails_only_that_request(bomb, tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    results = OfflineVLM().generate(
        [QUERY_CAPTION.request(None, bomb), QUERY_CAPTION.request(None, tmp_path / "ok.png")]
    )
    assert results[0].error.startswith("image_too_large: ") and not results[0].retryable
    assert results[1].error is None and results[1].text


def test_an_encoder_embeds_the_item_from_its_text_alone(bomb):
    class ImageEncoder:
        dim = 2

        def embed(self, items):
            for item in items:
                if item.image_path is not None:
                    load_image(item.image_path)
            return [[1.0, 0.0] for _ in items]

    embedded = embed_robustly(ImageEncoder(), [EncodeItem("a caption", bomb)])
    assert "image_too_large" in embedded.degraded[0] and not embedded.failed


def test_search_and_the_page_refuse_it(bomb, tmp_path):
    with pytest.raises(SearchError, match="too large"):
        check_query_image(bomb)
    with pytest.raises(SearchError, match="image too large"):
        save_upload(bomb.read_bytes(), tmp_path / "uploads")
    with pytest.raises(ValueError, match="image_too_large"):
        thumbnail(bomb, 64)  # the page's and the notebook's thumbnails
