"""Specification of the transformers backend, run against a real (tiny) model.

A randomly initialised LLaVA (CLIP vision tower + Llama text model, ~70k parameters) with an
offline-trained tokenizer is built from configs and saved to a temp dir once per session;
the backend loads it through the same Auto classes and code path a hub model id takes.

Its output is random words, but shaped so the tests can count tokens from text: the
fixture's generation config suppresses every token except whole words (`▁word`), EOS
included. So each generated token decodes to exactly one space-separated word, and every
request uses its full `max_tokens` budget: word count == token count == max_tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rar_pipeline.core.enhance.prompts import CORPUS_CAPTION, MODIFICATION, PROMPTS
from rar_pipeline.core.enhance.vlm.base import VLM, SamplingParams, VLMRequest
from rar_pipeline.core.enhance.vlm.config import TransformersConfig
from rar_pipeline.core.enhance.vlm.transformers import TransformersVLM

REPO = Path(__file__).resolve().parents[4]

ITEM_TEXTS = [
    "a red ceramic mug with a blue logo on a wooden table",
    "the quick brown fox jumps over the lazy dog",
    "find the same shoe but in green leather",
    "what lake is this and how deep is it",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(out: Path) -> None:
    """Save a seeded random LLaVA, its processor and tokenizer to `out` (no network)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlamaTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    # A Llama-style (Metaspace) BPE trained on the prompts the backend will see, so the
    # prompts tokenize compactly and the vocabulary holds plenty of whole words.
    corpus = [spec.system for spec in PROMPTS.values()] + ITEM_TEXTS
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    bpe.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    )
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = LlamaTokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) for m in trained["merges"]],
        pad_token="<pad>",
        extra_special_tokens=["<image>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()

    # Only whole-word tokens may be generated (see the module docstring).
    word_ids = {
        i for token, i in tokenizer.get_vocab().items() if token[:1] == "▁" and token[1:].isalpha()
    }
    assert len(word_ids) > 50
    model.generation_config.suppress_tokens = sorted(set(range(len(tokenizer))) - word_ids)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_llava")
    build_tiny_llava(out)
    return out


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    red = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (220, 20, 20)).save(red)
    blue = tmp_path / "blue.jpg"
    Image.new("RGB", (64, 96), (20, 20, 220)).save(blue)
    not_an_image = tmp_path / "broken.jpg"
    not_an_image.write_text("this is not a JPEG")
    return {"red": red, "blue": blue, "broken": not_an_image, "missing": tmp_path / "nope.png"}


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    """Record the keyword arguments of every from_pretrained call, still loading for real."""
    import transformers

    calls: dict[str, list[dict[str, Any]]] = {"processor": [], "model": []}
    for key, auto in (
        ("processor", transformers.AutoProcessor),
        ("model", transformers.AutoModelForImageTextToText),
    ):
        real = auto.from_pretrained

        def spy(*args: Any, _real: Any = real, _key: str = key, **kwargs: Any) -> Any:
            calls[_key].append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    return calls


def request(
    image: Path | None, text: str = ITEM_TEXTS[0], max_tokens: int = 6, temperature: float = 0.0
) -> VLMRequest:
    spec = CORPUS_CAPTION if image is not None else MODIFICATION
    sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=7)
    return spec.request(text, image, sampling=sampling)


def n_tokens(text: str | None) -> int:
    """Generated tokens in an output of the fixture model: one word each."""
    assert text is not None
    return len(text.split())


def test_one_result_per_request_in_order_for_mixed_image_and_text_batches(
    tiny_llava: Path, images: dict[str, Path]
) -> None:
    vlm = TransformersVLM(
        str(tiny_llava), config=TransformersConfig(device="cpu", device_batch_size=2)
    )
    assert isinstance(vlm, VLM)
    assert (vlm.backend, vlm.model_id) == ("transformers", str(tiny_llava))
    # Interleaved, so grouping by image/no image reorders them internally; each has its own
    # budget, so an output in the wrong slot shows as a wrong token count.
    image_cycle = [images["red"], None, images["blue"], None, images["red"], None, None]
    reqs = [
        request(image, ITEM_TEXTS[i % len(ITEM_TEXTS)], max_tokens=i + 1)
        for i, image in enumerate(image_cycle)
    ]

    results = vlm.generate(reqs)

    assert len(results) == len(reqs)
    assert all(r.ok and r.error is None for r in results), results
    # Also shows only the new tokens are decoded: a prompt in the text would add words.
    assert [n_tokens(r.text) for r in results] == [r.sampling.max_tokens for r in reqs]


def test_greedy_decoding_is_deterministic_and_each_output_fits_its_own_budget(
    tiny_llava: Path, images: dict[str, Path]
) -> None:
    vlm = TransformersVLM(
        str(tiny_llava), config=TransformersConfig(device="cpu", device_batch_size=4)
    )
    budgets = [3, 11, 1, 7]
    # One batch, different budgets: the batch runs to 11 and each row is cut to its own.
    # The first two are the same prompt, so the short output is the long one's beginning.
    reqs = [request(images["red"], ITEM_TEXTS[0], max_tokens=b) for b in budgets]
    reqs[2] = request(images["blue"], ITEM_TEXTS[1], max_tokens=budgets[2])
    reqs[3] = request(images["red"], ITEM_TEXTS[2], max_tokens=budgets[3])

    first = [r.text for r in vlm.generate(reqs)]
    second = [r.text for r in vlm.generate(reqs)]

    assert first == second
    assert [n_tokens(t) for t in first] == budgets
    assert first[1].split()[:3] == first[0].split()  # type: ignore[union-attr]
    # And a fresh backend (a new load of the same weights) gives the same texts.
    assert [
        r.text
        for r in TransformersVLM(str(tiny_llava), config=TransformersConfig(device="cpu")).generate(
            reqs
        )
    ] == first


def test_batching_and_padding_do_not_change_an_output(
    tiny_llava: Path, images: dict[str, Path]
) -> None:
    # Left padding with an attention mask leaves a short prompt's continuation as it is
    # alone; right padding would make it continue after the pad tokens.
    short = request(None, "dog", max_tokens=6)
    longer = request(None, " ".join(ITEM_TEXTS), max_tokens=6)
    with_image = request(images["red"], "dog", max_tokens=6)
    vlm = TransformersVLM(
        str(tiny_llava), config=TransformersConfig(device="cpu", device_batch_size=4)
    )

    alone = [vlm.generate([r])[0].text for r in (short, with_image)]
    batched = vlm.generate([longer, short, with_image, request(images["blue"], ITEM_TEXTS[3])])

    assert [batched[1].text, batched[2].text] == alone


def test_sampling_follows_the_request_seed(tiny_llava: Path, images: dict[str, Path]) -> None:
    vlm = TransformersVLM(str(tiny_llava), config=TransformersConfig(device="cpu"))
    reqs = [
        request(images["red"], max_tokens=8, temperature=1.0),
        request(None, max_tokens=8, temperature=1.0),
        request(None, max_tokens=4),  # greedy: its own group, same call
    ]

    first = vlm.generate(reqs)
    second = vlm.generate(reqs)

    assert all(r.ok for r in first)
    assert [r.text for r in first] == [r.text for r in second]
    assert [n_tokens(r.text) for r in first] == [8, 8, 4]


def test_remote_code_stays_off_by_default_and_local_files_only_is_passed_through(
    tiny_llava: Path, load_calls: dict[str, list[dict[str, Any]]]
) -> None:
    vlm = TransformersVLM(
        str(tiny_llava), config=TransformersConfig(device="cpu", local_files_only=True)
    )
    assert vlm.generate([request(None, max_tokens=2)])[0].ok

    for key in ("processor", "model"):
        (kwargs,) = load_calls[key]
        # Explicitly False, not merely absent (a library default could change).
        assert kwargs["trust_remote_code"] is False
        assert kwargs["local_files_only"] is True
        assert kwargs["revision"] is None


def test_trust_remote_code_and_revision_are_passed_when_asked_for(
    tiny_llava: Path, load_calls: dict[str, list[dict[str, Any]]]
) -> None:
    vlm = TransformersVLM(
        str(tiny_llava),
        trust_remote_code=True,
        config=TransformersConfig(device="cpu", revision="main"),
    )
    vlm.load()

    for key in ("processor", "model"):
        (kwargs,) = load_calls[key]
        assert (kwargs["trust_remote_code"], kwargs["local_files_only"]) == (True, False)
        assert kwargs["revision"] == "main"


def test_an_unreadable_image_fails_only_its_own_request(
    tiny_llava: Path, images: dict[str, Path]
) -> None:
    vlm = TransformersVLM(
        str(tiny_llava), config=TransformersConfig(device="cpu", device_batch_size=4)
    )
    reqs = [
        request(images["red"], max_tokens=3),
        request(images["missing"], max_tokens=3),
        request(None, max_tokens=3),
        request(images["broken"], max_tokens=3),
        request(images["blue"], max_tokens=3),
    ]

    results = vlm.generate(reqs)

    assert [r.ok for r in results] == [True, False, True, False, True]
    for bad in (1, 3):
        assert results[bad].text is None
        assert results[bad].error.startswith(f"cannot read image {reqs[bad].image_path}")  # type: ignore[union-attr]
    assert "FileNotFoundError" in results[1].error  # type: ignore[operator]
    assert [n_tokens(results[i].text) for i in (0, 2, 4)] == [3, 3, 3]


def test_a_failing_generate_call_fails_only_its_own_batch(
    tiny_llava: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import LlavaForConditionalGeneration

    real_generate = LlavaForConditionalGeneration.generate
    calls = []

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "generate", flaky)
    vlm = TransformersVLM(
        str(tiny_llava), config=TransformersConfig(device="cpu", device_batch_size=2)
    )

    results = vlm.generate([request(None, text, max_tokens=2) for text in ITEM_TEXTS[:3]])

    assert calls == [2, 1]
    assert [r.error for r in results[:2]] == ["RuntimeError: CUDA out of memory (simulated)"] * 2
    assert results[2].ok


def test_the_model_is_loaded_once_across_generate_calls(
    tiny_llava: Path, images: dict[str, Path], load_calls: dict[str, list[dict[str, Any]]]
) -> None:
    vlm = TransformersVLM(str(tiny_llava), config=TransformersConfig(device="cpu"))
    assert vlm.generate([]) == []
    assert load_calls == {"processor": [], "model": []}  # nothing to do: nothing loaded

    for reqs in ([request(None, max_tokens=2)], [request(images["red"], max_tokens=2)]) * 2:
        assert vlm.generate(reqs)[0].ok
    vlm.load()

    assert (len(load_calls["processor"]), len(load_calls["model"])) == (1, 1)


def test_bad_settings_fail_at_construction_without_loading() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TransformersVLM(config=TransformersConfig(device_batch_size=0))
    with pytest.raises(ValueError, match="dtype"):
        TransformersVLM(config=TransformersConfig(dtype="int4"))
    assert (
        TransformersVLM(config=TransformersConfig(dtype="BF16")).model_id
        == "Qwen/Qwen2.5-VL-7B-Instruct"
    )


def test_importing_the_backend_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, rar_pipeline.core.enhance.vlm.transformers as m; "
        "m.TransformersVLM(); "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
