"""The clip encoder, on a tiny CLIP built here: one space, trains what it names, exact reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rar_pipeline.core.retrieval.encoders.base import (
    ENCODER_CONFIG,
    EncodeItem,
    Encoder,
    TrainableEncoder,
)
from rar_pipeline.core.retrieval.encoders.clip import ClipEncoder
from rar_pipeline.core.retrieval.encoders.factory import create_encoder, load_encoder
from rar_pipeline.core.retrieval.options import TRAINED
from tests.core.retrieval.tiny_models import (
    build_clip,
    build_siglip,
    images,
    parameters,
    pickle_files,
    train,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and never spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return images(tmp_path_factory.mktemp("pictures"))


@pytest.fixture
def queries(pictures: list[Path]) -> list[EncodeItem]:
    return [EncodeItem("which shape is red?"), EncodeItem("what colour is it?", pictures[1])]


@pytest.fixture
def candidates(pictures: list[Path]) -> list[EncodeItem]:
    return [EncodeItem(None, pictures[0]), EncodeItem("a blue square", pictures[1])]


def test_text_image_and_fused_items_land_in_one_unit_length_space(tiny_clip, pictures):
    encoder = create_encoder("clip", model=str(tiny_clip), dim=16)
    assert isinstance(encoder, Encoder) and isinstance(encoder, TrainableEncoder)
    assert encoder.name == "clip" and encoder.dim == 16
    text, image = EncodeItem("a blue square"), EncodeItem(None, pictures[1])
    both = EncodeItem("a blue square", pictures[1])

    out = encoder.forward(encoder.inputs([text, image, both]))
    assert out.shape == (3, 16) and out.requires_grad
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)

    vectors = encoder.embed([text, image, both])
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    assert np.allclose(vectors, out.detach().numpy(), atol=1e-6)
    # the fused item is neither side alone
    assert not np.allclose(vectors[2], vectors[0], atol=1e-3)
    assert not np.allclose(vectors[2], vectors[1], atol=1e-3)


def test_the_fused_item_is_the_normalised_sum_of_its_projected_text_and_image(tiny_clip, pictures):
    encoder = create_encoder("clip", model=str(tiny_clip), dim=16)
    backbone, heads = encoder.backbone, encoder.module["heads"]
    batch = encoder.inputs([EncodeItem("a blue square", pictures[1])])
    with torch.no_grad():
        text = backbone.get_text_features(**batch["text"]).pooler_output
        image = backbone.get_image_features(**batch["image"]).pooler_output
        normalize = torch.nn.functional.normalize
        expected = normalize(
            heads["text"](normalize(text, dim=1)) + heads["image"](normalize(image, dim=1)), dim=1
        )
        assert torch.allclose(encoder.forward(batch), expected, atol=1e-6)


def test_items_embed_the_same_alone_or_in_a_mixed_batch(tiny_clip, pictures):
    encoder = create_encoder("clip", model=str(tiny_clip), dim=16)
    items = [
        EncodeItem("a red circle"),
        EncodeItem(None, pictures[0]),
        EncodeItem("x", pictures[2]),
    ]
    together = encoder.embed(items)
    alone = np.concatenate([encoder.embed([item]) for item in items])
    assert np.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("trained", TRAINED)
def test_a_training_step_changes_exactly_the_parameters_trained_names(
    tiny_clip, queries, candidates, trained
):
    encoder = create_encoder("clip", model=str(tiny_clip), dim=16, trained=trained)
    trainable = {n for n, p in encoder.module.named_parameters() if p.requires_grad}
    before = parameters(encoder)
    train(encoder, queries, candidates)
    after = parameters(encoder)
    changed = {n for n in before if not torch.equal(before[n], after[n])}

    assert changed == trainable
    heads = {n for n in trainable if n.startswith("heads.")}
    assert heads == {"heads.text.weight", "heads.image.weight"}
    backbone = trainable - heads
    if trained == "heads":
        assert backbone == set()
    elif trained == "full":  # both towers, the projections; not the unused logit scale
        assert any(".text_model." in n for n in backbone)
        assert any(".vision_model." in n for n in backbone)
        assert "backbone.visual_projection.weight" in backbone
        assert "backbone.logit_scale" not in backbone
    else:  # LoRA adapters on every linear layer of both towers, nothing else
        assert backbone and all(".lora_A." in n or ".lora_B." in n for n in backbone)
        assert any(".text_model." in n for n in backbone)
        assert any(".vision_model." in n for n in backbone)


@pytest.mark.parametrize("trained", TRAINED)
def test_a_trained_encoder_saves_safetensors_and_reloads_to_identical_embeddings(
    tmp_path, tiny_clip, queries, candidates, trained
):
    encoder = create_encoder("clip", model=str(tiny_clip), dim=16, seed=5, trained=trained)
    train(encoder, queries, candidates)
    encoder.save(tmp_path / "saved")

    saved = tmp_path / "saved"
    assert pickle_files(saved) == []
    assert (saved / "heads.safetensors").is_file()
    assert (saved / "backbone" / "model.safetensors").is_file() == (trained == "full")
    assert (saved / "adapter" / "adapter_model.safetensors").is_file() == (trained == "lora")
    config = json.loads((saved / ENCODER_CONFIG).read_text())
    assert config["encoder"] == "clip" and config["model"] == str(tiny_clip)
    assert (config["dim"], config["seed"], config["trained"]) == (16, 5, trained)

    loaded = load_encoder(saved)
    assert isinstance(loaded, ClipEncoder) and loaded.trained == trained
    items = queries + candidates
    assert np.array_equal(loaded.embed(items), encoder.embed(items))
    # the reloaded encoder trains the same parameters
    assert {n for n, p in loaded.module.named_parameters() if p.requires_grad} == {
        n for n, p in encoder.module.named_parameters() if p.requires_grad
    }


def test_the_same_seed_builds_the_same_encoder(tiny_clip, queries):
    one = create_encoder("clip", model=str(tiny_clip), dim=16, seed=1, trained="lora")
    same = create_encoder("clip", model=str(tiny_clip), dim=16, seed=1, trained="lora")
    other = create_encoder("clip", model=str(tiny_clip), dim=16, seed=2, trained="lora")
    assert np.array_equal(one.embed(queries), same.embed(queries))
    assert not np.allclose(one.embed(queries), other.embed(queries))
    lora = [n for n, _ in one.module.named_parameters() if ".lora_A." in n]
    state, again = dict(one.module.named_parameters()), dict(same.module.named_parameters())
    assert lora and all(torch.equal(state[n], again[n]) for n in lora)


def test_settings_are_json_and_remote_code_stays_off_unless_asked(tiny_clip, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    encoder = create_encoder("clip", model=str(tiny_clip), dim=8, trained="lora", lora_r=4)
    config = json.loads(json.dumps(encoder.config()))
    assert config["trust_remote_code"] is False and seen == [False]
    assert config["lora_r"] == 4 and config["dim"] == 8


def test_an_unknown_training_mode_is_refused(tiny_clip):
    with pytest.raises(ValueError, match="trained must be one of"):
        create_encoder("clip", model=str(tiny_clip), trained="everything")


def test_a_siglip_model_pads_text_to_its_length_and_reloads_exactly(tmp_path, queries, candidates):
    tiny_siglip = build_siglip(tmp_path / "tiny-siglip")
    encoder = create_encoder("clip", model=str(tiny_siglip), dim=8, trained="lora")
    batch = encoder.inputs(queries)
    assert batch["text"]["input_ids"].shape == (2, 16)  # padding="max_length", as SigLIP trained
    before = parameters(encoder)
    train(encoder, queries, candidates)
    after = parameters(encoder)
    trainable = {n for n, p in encoder.module.named_parameters() if p.requires_grad}
    assert {n for n in before if not torch.equal(before[n], after[n])} == trainable
    items = queries + candidates
    vectors = encoder.embed(items)
    assert vectors.shape == (4, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    encoder.save(tmp_path / "saved")
    assert pickle_files(tmp_path / "saved") == []
    assert np.array_equal(load_encoder(tmp_path / "saved").embed(items), vectors)
