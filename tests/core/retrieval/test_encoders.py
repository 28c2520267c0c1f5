"""The offline encoder: any modality into one unit-length space, features cached, no pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_pipeline.core.retrieval.encoders import offline
from rar_pipeline.core.retrieval.encoders.base import EncodeItem, Encoder
from rar_pipeline.core.retrieval.encoders.factory import create_encoder


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for name, colour in (("red.png", (200, 20, 20)), ("blue.png", (20, 20, 200))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def test_items_of_every_modality_land_in_one_unit_length_space(tmp_path, images):
    encoder = create_encoder("offline", cache_dir=tmp_path / "features", dim=32)
    assert isinstance(encoder, Encoder) and encoder.dim == 32
    items = [
        EncodeItem("a red circle"),
        EncodeItem(None, images[0]),
        EncodeItem("Listing 2. Visual Context: a blue square.", images[1]),
    ]
    vectors = encoder.embed(items)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the image+text item is the fused sum, not either side alone
    alone = encoder.embed([EncodeItem("Listing 2. Visual Context: a blue square.")])
    assert not np.allclose(vectors[2], alone[0])


def test_an_item_needs_text_or_an_image():
    with pytest.raises(ValueError, match="text or an image"):
        EncodeItem(None, None)


def test_backbone_features_are_computed_once_per_content(tmp_path, images, monkeypatch):
    calls = {"text": 0, "image": 0}
    real_text = offline.text_features

    def counting_text(texts, batch_size=64):
        calls["text"] += len(texts)
        return real_text(texts, batch_size)

    monkeypatch.setattr(offline, "text_features", counting_text)
    first = create_encoder("offline", cache_dir=tmp_path / "f", dim=16)
    items = [EncodeItem("same words"), EncodeItem("same words"), EncodeItem(None, images[0])]
    before = first.embed(items)
    assert calls["text"] == 1  # two items, one content
    second = create_encoder("offline", cache_dir=tmp_path / "f", dim=16)  # a new process
    again = second.embed(items)
    assert calls["text"] == 1 and np.allclose(before, again)  # from the cache


def test_the_same_seed_builds_the_same_encoder_and_save_load_is_exact(tmp_path, images):
    items = [EncodeItem("a teal triangle", images[0]), EncodeItem("who founded it?")]
    one = create_encoder("offline", dim=24, seed=3)
    assert np.allclose(one.embed(items), create_encoder("offline", dim=24, seed=3).embed(items))
    assert not np.allclose(one.embed(items), create_encoder("offline", dim=24, seed=4).embed(items))
    one.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "encoder.json",
        "projections.safetensors",
    ]
    loaded = offline.OfflineEncoder.load(tmp_path / "ckpt")
    assert np.array_equal(loaded.embed(items), one.embed(items))


def test_gradients_reach_only_the_projections(images):
    encoder = create_encoder("offline", dim=8)
    out = encoder.forward(encoder.inputs([EncodeItem("x", images[0]), EncodeItem("y")]))
    out.sum().backward()
    grads = {name: p.grad for name, p in encoder.module.named_parameters()}
    assert set(grads) == {"text.weight", "image.weight"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_the_minilm_weights_are_pinned(monkeypatch):
    from rar_pipeline.core.enhance.perception import WeightsMismatchError

    offline._minilm.cache_clear()
    monkeypatch.setattr(offline, "MINILM_SHA256", "0" * 64)
    try:
        with pytest.raises(WeightsMismatchError):
            offline.text_features(["anything"])
    finally:
        offline._minilm.cache_clear()


def test_unknown_encoders_are_refused():
    with pytest.raises(ValueError, match="unknown encoder"):
        create_encoder("telepathy")
