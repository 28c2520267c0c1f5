"""The offline encoder: any modality into one unit-length space, features cached, no pickle."""

from __future__ import annotations

import json
import re
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


# --- fine-tuning the text backbone: trained="full" | "lora" -------------------------------

TEXTS = ["a red circle", "what colour is the square?", "Listing 2. a green triangle", "blue"]


@pytest.fixture
def four_images(tmp_path: Path) -> list[Path]:
    paths = []
    colours = ((200, 20, 20), (20, 20, 200), (20, 200, 20), (200, 200, 20))
    for i, colour in enumerate(colours):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"c{i}.png")
        paths.append(tmp_path / f"c{i}.png")
    return paths


def _backbone_features(encoder, texts: list[str]) -> np.ndarray:
    import torch

    inputs = encoder.inputs([EncodeItem(t) for t in texts])
    with torch.no_grad():
        backbone = encoder.module["text_backbone"]
        return offline.pooled_text_features(backbone, inputs["tokens"]).numpy()


def _adam_step(encoder, images: list[Path]) -> None:
    """One InfoNCE step: each text towards its image, the other images in-batch negatives."""
    import torch

    from rar_pipeline.core.retrieval.losses import compute_loss_from_embeddings

    encoder.module.train()
    params = [p for p in encoder.module.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=1e-3)
    queries = encoder.forward(encoder.inputs([EncodeItem(t) for t in TEXTS]))
    candidates = encoder.forward(encoder.inputs([EncodeItem(None, p) for p in images]))
    targets = torch.arange(len(TEXTS))
    loss = compute_loss_from_embeddings(queries, candidates, targets, None, 0.05)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    encoder.module.eval()


def _perturb(encoder) -> None:
    """Move every trainable weight as a training step would (without paying for one)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 1e-2)


def _trainable(encoder) -> dict[str, object]:
    return {n: p for n, p in encoder.module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("trained", ["full", "lora"])
def test_a_trainable_backbone_is_built_from_the_pinned_minilm_only(trained, monkeypatch):
    # first of the MiniLM tests after the pin test: the shared model is not loaded yet
    from rar_pipeline.core.enhance.perception import WeightsMismatchError

    offline._minilm.cache_clear()
    monkeypatch.setattr(offline, "MINILM_SHA256", "0" * 64)
    try:
        with pytest.raises(WeightsMismatchError):
            offline.OfflineEncoder(trained=trained)
    finally:
        offline._minilm.cache_clear()


@pytest.mark.parametrize("trained", ["full", "lora"])
def test_a_trainable_backbone_starts_from_the_frozen_minilm_features(trained, images):
    frozen = offline.text_features(TEXTS)
    encoder = offline.OfflineEncoder(dim=16, seed=2, trained=trained)
    assert np.allclose(_backbone_features(encoder, TEXTS), frozen, atol=1e-5)
    # so at step 0 it embeds as the heads-only encoder of the same seed does
    items = [EncodeItem(TEXTS[0]), EncodeItem(TEXTS[1], images[0]), EncodeItem(None, images[1])]
    heads = offline.OfflineEncoder(dim=16, seed=2)
    assert np.allclose(encoder.embed(items), heads.embed(items), atol=1e-5)


def test_heads_only_reads_cached_text_features_and_a_trained_backbone_reads_tokens(monkeypatch):
    heads = offline.OfflineEncoder(dim=8)
    assert "tokens" not in heads.inputs([EncodeItem("cached words")])  # no tokenisation

    def refuse(texts, batch_size=64):
        raise AssertionError("a trainable backbone must not use frozen text features")

    monkeypatch.setattr(offline, "text_features", refuse)
    encoder = offline.OfflineEncoder(dim=8, trained="full")
    inputs = encoder.inputs([EncodeItem("fresh words")])
    assert inputs["tokens"]["input_ids"].shape[0] == 1
    assert encoder.embed([EncodeItem("fresh words")]).shape == (1, 8)


def test_full_fine_tuning_sends_gradients_into_minilm_and_the_heads(images):
    encoder = offline.OfflineEncoder(dim=8, trained="full")
    out = encoder.forward(encoder.inputs([EncodeItem("x", images[0]), EncodeItem("y z")]))
    out.sum().backward()
    trainable = _trainable(encoder)
    backbone = {n for n, _ in encoder.module["text_backbone"].named_parameters()}
    # every MiniLM weight trains but BERT's pooler, which mean pooling never reads
    pooler = {n for n in backbone if n.startswith("pooler.")}
    assert set(trainable) == {"text.weight", "image.weight"} | {
        f"text_backbone.{n}" for n in backbone - pooler
    }
    assert len(trainable) > 100
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())


def test_lora_sends_gradients_only_into_the_adapters_and_the_heads(images):
    encoder = offline.OfflineEncoder(dim=8, trained="lora", lora_r=4, lora_alpha=8)
    out = encoder.forward(encoder.inputs([EncodeItem("x", images[0]), EncodeItem("y z")]))
    out.sum().backward()
    trainable = _trainable(encoder)
    adapters = {n for n in trainable if ".lora_" in n}
    assert set(trainable) == {"text.weight", "image.weight"} | adapters
    # query/key/value and the attention output of each of MiniLM's 6 layers, A and B each
    assert len(adapters) == 6 * 4 * 2
    for target in ("self.query", "self.key", "self.value", "attention.output.dense"):
        assert sum(f".{target}.lora_" in n for n in adapters) == 6 * 2
    pattern = r".*\.attention\.(self\.(query|key|value)|output\.dense)\.lora_[AB]\.default\.weight"
    assert all(re.fullmatch(pattern, n) for n in adapters)  # no feed-forward layers
    for name, p in trainable.items():
        assert p.grad is not None, name
        if ".lora_A." not in name:  # B starts at zero, so A's first gradient is zero
            assert p.grad.abs().sum() > 0, name
    frozen = [p for n, p in encoder.module.named_parameters() if n not in trainable]
    assert frozen and all(p.grad is None for p in frozen)
    assert all(trainable[n].shape[0 if ".lora_A." in n else 1] == 4 for n in adapters)  # r
    assert encoder.module["text_backbone"].peft_config["default"].lora_alpha == 8


@pytest.mark.parametrize("trained", ["full", "lora"])
def test_one_adam_step_on_infonce_changes_the_text_embeddings(trained, four_images):
    encoder = offline.OfflineEncoder(dim=16, trained=trained)
    items = [EncodeItem(t) for t in TEXTS]
    before, features_before = encoder.embed(items), _backbone_features(encoder, TEXTS)
    _adam_step(encoder, four_images)
    after = encoder.embed(items)
    assert not np.allclose(before, after, atol=1e-4)
    assert not np.allclose(features_before, _backbone_features(encoder, TEXTS), atol=1e-5)
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)


def test_fine_tuning_never_changes_the_process_wide_minilm(four_images):
    frozen = offline.text_features(TEXTS)
    shared = offline._minilm()[0].auto_model
    checksums = {k: float(v.double().sum()) for k, v in shared.state_dict().items()}
    first = offline.OfflineEncoder(dim=16, trained="full")
    _adam_step(first, four_images)
    assert not np.allclose(_backbone_features(first, TEXTS), frozen, atol=1e-5)  # it trained
    assert {k: float(v.double().sum()) for k, v in shared.state_dict().items()} == checksums
    assert np.allclose(offline.text_features(TEXTS), frozen, atol=1e-6)
    second = offline.OfflineEncoder(dim=16, trained="full")  # a fresh encoder: the original
    assert np.allclose(_backbone_features(second, TEXTS), frozen, atol=1e-5)


def test_the_same_seed_builds_the_same_lora_encoder():
    import torch

    def adapters(encoder) -> dict[str, object]:
        return {n: p.detach() for n, p in _trainable(encoder).items()}

    one = adapters(offline.OfflineEncoder(dim=8, seed=5, trained="lora"))
    same = adapters(offline.OfflineEncoder(dim=8, seed=5, trained="lora"))
    other = adapters(offline.OfflineEncoder(dim=8, seed=6, trained="lora"))
    assert one.keys() == same.keys() == other.keys()
    assert all(torch.equal(one[n], same[n]) for n in one)
    lora_a = [n for n in one if ".lora_A." in n]
    assert lora_a and not any(torch.equal(one[n], other[n]) for n in lora_a)


def test_embed_is_deterministic_in_training_mode_and_leaves_it_on(images):
    import torch

    encoder = offline.OfflineEncoder(dim=8, trained="full")
    items = [EncodeItem("a red circle", images[0]), EncodeItem("who founded it?")]
    evaluated = encoder.embed(items)
    encoder.module.train()
    with torch.no_grad():  # in training mode MiniLM's dropout is on...
        inputs = encoder.inputs(items)
        assert not torch.equal(encoder.forward(inputs), encoder.forward(inputs))
    assert np.array_equal(encoder.embed(items), evaluated)  # ...but never in embed
    assert np.array_equal(encoder.embed(items), evaluated)
    assert all(m.training for m in encoder.module.modules())


@pytest.mark.parametrize("trained", ["heads", "full", "lora"])
def test_a_saved_encoder_reloads_with_identical_embeddings(trained, tmp_path, four_images):
    from rar_pipeline.core.retrieval.encoders.factory import load_encoder

    encoder = create_encoder("offline", dim=16, seed=1, trained=trained, lora_r=4, lora_alpha=8)
    _perturb(encoder)  # trained weights, not the pinned or freshly initialised ones
    encoder.save(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    expected = {
        "heads": [],
        "full": ["text_backbone.safetensors"],
        "lora": ["text_lora.safetensors"],
    }
    assert files == sorted(["encoder.json", "projections.safetensors", *expected[trained]])
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle")) for f in files)
    config = json.loads((tmp_path / "ckpt" / "encoder.json").read_text())
    assert config == {
        "encoder": "offline",
        "dim": 16,
        "seed": 1,
        "trained": trained,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    loaded = load_encoder(tmp_path / "ckpt")
    assert isinstance(loaded, offline.OfflineEncoder) and loaded.trained == trained
    items = [EncodeItem(t) for t in TEXTS[:2]] + [EncodeItem(TEXTS[2], four_images[0])]
    np.testing.assert_allclose(loaded.embed(items), encoder.embed(items), rtol=0, atol=1e-6)


def test_unknown_training_modes_are_refused():
    with pytest.raises(ValueError, match="trained must be one of heads, full, lora"):
        offline.OfflineEncoder(trained="everything")
