"""Tiny randomly initialised CLIP and Qwen2-VL checkpoints, laid out as on the hub.

No network here (see shared/OFFLINE.md): each builder trains a byte-level BPE on a few
sentences with `tokenizers`, wraps it in the model's own tokenizer class, builds a model
from a small config and `save_pretrained`s model and processing files into a folder that
the encoders then load through the same Auto classes a real model id goes through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

SENTENCES = [
    "a red circle on a white background",
    "a blue square next to a green triangle",
    "Listing 2. Visual Context: a teal shape. Which colour is the shape?",
    "who founded the shop and when did it open",
    "Summarize above image and sentence in one word:",
    "the quick brown fox jumps over the lazy dog 0123456789",
]


def _bpe(
    special: list[str], suffix: str = "", vocab_size: int = 300
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE trained on `SENTENCES`: its vocab and merges (`suffix` ends words)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=suffix))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=suffix,
    )
    tokenizer.train_from_iterator(SENTENCES * 4, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def images(directory: Path) -> list[Path]:
    """Three small RGB images of different colours and sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, colour, size in (
        ("red.png", (200, 20, 20), (64, 64)),
        ("blue.png", (20, 20, 200), (48, 80)),
        ("green.png", (20, 180, 40), (90, 60)),
    ):
        Image.new("RGB", size, colour).save(directory / name)
        paths.append(directory / name)
    return paths


def build_clip(directory: Path) -> Path:
    """A tiny CLIP (text + vision towers, ~65k parameters) and its processor."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    bos, eos, pad = "<|startoftext|>", "<|endoftext|>", "<|endoftext|>"
    vocab, merges = _bpe([bos, eos], suffix="</w>")
    tokenizer = CLIPTokenizer(
        vocab=vocab, merges=merges, bos_token=bos, eos_token=eos, pad_token=pad
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,  # CLIP pools at the first EOS
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_siglip(directory: Path) -> Path:
    """A tiny SigLIP (no projections: features are the towers' pooled outputs)."""
    import torch
    from transformers import (
        CLIPTokenizer,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
        SiglipProcessor,
    )

    vocab, merges = _bpe(["<|startoftext|>", "<|endoftext|>"], suffix="</w>")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)  # any tokenizer class will do
    config = SiglipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 24,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(directory)
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat template, less the default system turn and the video branch.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen2_vl(directory: Path) -> Path:
    """A tiny Qwen2-VL (~200k parameters) saved with the files a hub repo has.

    The processing files are those of `Qwen/Qwen2-VL-2B-Instruct`: tokenizer files, a
    chat template and `preprocessor_config.json` naming `Qwen2VLProcessor` (whose stock
    class needs torchvision for its video processor); no video processor config.
    """
    import torch
    from transformers import (
        Qwen2Tokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    vocab, merges = _bpe(QWEN_SPECIAL)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens(QWEN_SPECIAL, special_tokens=True)  # each one id, never split
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids
    head_dim = 32 // 4
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [1, 1, head_dim // 2 - 2],
            },
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    image_processor.save_pretrained(directory)
    preprocessor = directory / "preprocessor_config.json"
    settings = json.loads(preprocessor.read_text())
    settings.update(
        image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2VLProcessor"
    )
    preprocessor.write_text(json.dumps(settings, indent=2))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))
    return directory


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def pickle_files(directory: Path) -> list[Path]:
    """Files under `directory` in a pickle-based format."""
    return [p for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES]


def parameters(encoder: Any) -> dict[str, Any]:
    """A detached copy of every parameter of the encoder's module, by name."""
    return {n: p.detach().clone() for n, p in encoder.module.named_parameters()}


def train(encoder: Any, queries: list[Any], candidates: list[Any], steps: int = 2) -> float:
    """`steps` Adam steps of in-batch InfoNCE (query i's positive: candidate i); last loss.

    Two steps, so LoRA's A matrices move too (their gradient is zero while B is).
    """
    import torch

    from rar_pipeline.core.retrieval.losses import compute_loss_from_embeddings

    module = encoder.module
    optimiser = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    module.train()
    targets = torch.arange(len(queries))
    for _ in range(steps):
        q = encoder.forward(encoder.inputs(queries))
        c = encoder.forward(encoder.inputs(candidates))
        loss = compute_loss_from_embeddings(q, c, targets, None, 0.05)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    module.eval()
    return float(loss.detach())
