"""The vlm-embed encoder on a tiny Qwen2-VL laid out as a hub repo: LamRA recipe, exact reload."""

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
from rar_pipeline.core.retrieval.encoders.factory import create_encoder, load_encoder
from rar_pipeline.core.retrieval.encoders.vlm_embed import EMB_TOKEN, VlmEmbedEncoder
from tests.core.retrieval.tiny_models import (
    build_qwen2_vl,
    images,
    parameters,
    pickle_files,
    train,
)

HIDDEN = 32  # the tiny model's hidden size
VISION = "backbone.model.visual."  # the vision tower's parameters, under the module
LORA_VISION = "backbone.base_model.model.model.visual."
# (trained, pool): every training mode, and LoRA with the pool that trains the <emb> row
MODES = [("heads", "lamra"), ("full", "lamra"), ("lora", "lamra"), ("lora", "emb")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and never spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return images(tmp_path_factory.mktemp("pictures"))


@pytest.fixture
def queries(pictures: list[Path]) -> list[EncodeItem]:
    return [EncodeItem("which shape is red?"), EncodeItem("what colour is it?", pictures[1])]


@pytest.fixture
def candidates(pictures: list[Path]) -> list[EncodeItem]:
    return [EncodeItem(None, pictures[0]), EncodeItem("a blue square", pictures[1])]


def test_text_image_and_fused_items_land_in_one_unit_length_space(tiny_qwen, pictures):
    encoder = create_encoder("vlm-embed", model=str(tiny_qwen), dim=16)
    assert isinstance(encoder, Encoder) and isinstance(encoder, TrainableEncoder)
    assert encoder.name == "vlm-embed" and encoder.dim == 16
    text, image = EncodeItem("a blue square"), EncodeItem(None, pictures[1])
    both = EncodeItem("a blue square", pictures[1])

    out = encoder.forward(encoder.inputs([text, image, both]))
    assert out.shape == (3, 16) and out.requires_grad
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)

    vectors = encoder.embed([text, image, both])
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    assert np.allclose(vectors, out.detach().numpy(), atol=1e-5)
    assert not np.allclose(vectors[2], vectors[0], atol=1e-3)
    assert not np.allclose(vectors[2], vectors[1], atol=1e-3)


def test_each_item_is_one_lamra_chat_answered_by_the_emb_token(tiny_qwen, pictures):
    encoder = create_encoder("vlm-embed", model=str(tiny_qwen), dim=16)
    tokenizer = encoder.processor.tokenizer
    assert encoder.emb_id == tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    assert encoder.backbone.get_input_embeddings().weight.shape[0] == len(tokenizer)
    items = [
        EncodeItem("a red circle"),
        EncodeItem(None, pictures[0]),
        EncodeItem("x", pictures[1]),
    ]
    batch = encoder.inputs(items)
    assert ((batch["input_ids"] == encoder.emb_id).sum(dim=1) == 1).all()
    texts = [tokenizer.decode(row, skip_special_tokens=False) for row in batch["input_ids"]]
    assert "a red circle\nSummarize above sentence in one word: " in texts[0]
    assert "Summarize above image in one word: " in texts[1]
    assert "<|vision_end|>x\nSummarize above image and sentence in one word: " in texts[2]
    assert all(f"assistant\n{EMB_TOKEN}." in text for text in texts)
    assert batch["pixel_values"].shape[0] > 0 and batch["image_grid_thw"].shape == (2, 3)


@pytest.mark.parametrize("pool, offset", [("lamra", -1), ("emb", 0)])
def test_the_embedding_is_the_last_hidden_state_lamra_takes(tiny_qwen, pictures, pool, offset):
    """LamRA's code takes the state of the token before <emb>; pool="emb" the <emb> one."""
    encoder = create_encoder(
        "vlm-embed", model=str(tiny_qwen), dim=HIDDEN, head=False, trained="full", pool=pool
    )
    items = [EncodeItem("a red circle", pictures[0]), EncodeItem("a much longer question here")]
    batch = encoder.inputs(items)
    with torch.no_grad():
        out = encoder.backbone(**batch, output_hidden_states=True)
    last = out.hidden_states[-1]
    at = [row.tolist().index(encoder.emb_id) + offset for row in batch["input_ids"]]
    expected = torch.nn.functional.normalize(last[torch.arange(2), at], dim=1)
    assert np.allclose(encoder.embed(items), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("trained, pool", MODES)
def test_a_training_step_changes_exactly_the_parameters_trained_names(
    tiny_qwen, queries, candidates, trained, pool
):
    encoder = create_encoder("vlm-embed", model=str(tiny_qwen), dim=16, trained=trained, pool=pool)
    trainable = {n for n, p in encoder.module.named_parameters() if p.requires_grad}
    before = parameters(encoder)
    train(encoder, queries, candidates)
    after = parameters(encoder)
    changed = {n for n in before if not torch.equal(before[n], after[n])}

    assert changed == trainable
    assert "heads.hidden.weight" in trainable
    vision = {n for n in before if n.startswith((VISION, LORA_VISION))}
    assert vision and not vision & trainable  # the vision tower stays frozen in every mode
    backbone = trainable - {"heads.hidden.weight"}
    if trained == "heads":
        assert backbone == set()
    elif trained == "full":  # the language model, its token embeddings included
        assert any(".language_model.layers." in n for n in backbone)
        assert any("embed_tokens" in n for n in backbone)
    else:  # LoRA on every language-model linear layer; the <emb> row when pool="emb"
        lora = {n for n in backbone if ".lora_A." in n or ".lora_B." in n}
        rows = backbone - lora
        kinds = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora}
        assert kinds == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
        assert len(lora) == 2 * 7 * 2  # A and B, seven layers a block, two blocks
        if pool == "emb":
            assert len(rows) == 1 and "trainable_tokens_delta" in rows.pop()
        else:
            assert rows == set()


def test_lora_defaults_are_lamras_rank_128_alpha_256(tiny_qwen):
    encoder = create_encoder("vlm-embed", model=str(tiny_qwen), dim=16, trained="lora", pool="emb")
    lora = encoder.module["backbone"].peft_config["default"]
    assert (lora.r, lora.lora_alpha) == (128, 256)
    assert lora.trainable_token_indices == {"embed_tokens": [encoder.emb_id]}
    config = encoder.config()
    assert (config["lora_r"], config["lora_alpha"], config["pool"]) == (128, 256, "emb")


@pytest.mark.parametrize("trained, pool", MODES)
def test_a_trained_encoder_saves_safetensors_and_reloads_to_identical_embeddings(
    tmp_path, tiny_qwen, queries, candidates, trained, pool
):
    encoder = create_encoder(
        "vlm-embed", model=str(tiny_qwen), dim=16, seed=3, trained=trained, pool=pool
    )
    train(encoder, queries, candidates)
    saved = tmp_path / "saved"
    encoder.save(saved)

    assert pickle_files(saved) == []
    assert (saved / "heads.safetensors").is_file()
    assert (saved / "backbone" / "model.safetensors").is_file() == (trained == "full")
    assert (saved / "adapter" / "adapter_model.safetensors").is_file() == (trained == "lora")
    config = json.loads((saved / ENCODER_CONFIG).read_text())
    assert config["encoder"] == "vlm-embed" and config["model"] == str(tiny_qwen)
    assert (config["dim"], config["seed"], config["trained"], config["pool"]) == (
        16,
        3,
        trained,
        pool,
    )

    loaded = load_encoder(saved)
    assert isinstance(loaded, VlmEmbedEncoder) and loaded.emb_id == encoder.emb_id
    items = queries + candidates
    assert np.array_equal(loaded.embed(items), encoder.embed(items))
    assert {n for n, p in loaded.module.named_parameters() if p.requires_grad} == {
        n for n, p in encoder.module.named_parameters() if p.requires_grad
    }


def test_the_hub_layout_loads_without_torchvision_through_an_image_only_processor(tiny_qwen):
    from transformers import AutoProcessor

    assert json.loads((tiny_qwen / "preprocessor_config.json").read_text())["processor_class"] == (
        "Qwen2VLProcessor"
    )
    encoder = create_encoder("vlm-embed", model=str(tiny_qwen), dim=16)
    processor = encoder.processor
    assert not hasattr(processor, "video_processor")
    assert processor.image_processor is not None and processor.chat_template
    # a folder the image-only processor saved loads back through AutoProcessor
    processor.save_pretrained(tiny_qwen.parent / "processor-copy")
    again = AutoProcessor.from_pretrained(tiny_qwen.parent / "processor-copy")
    assert type(again) is type(processor)


def test_options_that_cannot_work_are_refused(tiny_qwen):
    with pytest.raises(ValueError, match="needs head=True"):
        create_encoder("vlm-embed", model=str(tiny_qwen), trained="heads", head=False)
    with pytest.raises(ValueError, match="hidden size"):
        create_encoder("vlm-embed", model=str(tiny_qwen), dim=16, trained="lora", head=False)
    with pytest.raises(ValueError, match="pool must be"):
        create_encoder("vlm-embed", model=str(tiny_qwen), pool="mean")
