"""Contract test of the vLLM backend.

vLLM cannot be installed here (CUDA-only wheels), so a recording fake replaces the `vllm`
module: these tests pin the exact engine construction, `chat` calls, conversations and
sampling parameters the backend sends, and how it maps vLLM's outputs back to results.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rar_pipeline.core.enhance.prompts import CORPUS_CAPTION, MODIFICATION, QUERY_CAPTION
from rar_pipeline.core.enhance.vlm.base import VLM, SamplingParams, VLMRequest, VLMResult
from rar_pipeline.core.enhance.vlm.config import VLLMConfig
from rar_pipeline.core.enhance.vlm.vllm import VLLMVLM

REPO = Path(__file__).resolve().parents[4]


# --- the fake vllm module ------------------------------------------------------------------


@dataclass
class ChatCall:
    conversations: list[list[dict[str, Any]]]
    sampling_params: list[Any]
    use_tqdm: Any


@dataclass
class Recorder:
    """What the fake engine saw, and how it answers."""

    engine_kwargs: list[dict[str, Any]] = field(default_factory=list)
    chat_calls: list[ChatCall] = field(default_factory=list)
    # chat call number (0-based) -> exception to raise for it
    fail_on_call: dict[int, Exception] = field(default_factory=dict)
    reply: Callable[[list[dict[str, Any]]], str] = lambda conv: f"  re: {user_text(conv)}\n"


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def make_fake_vllm(recorder: Recorder) -> types.ModuleType:
    class FakeLLM:
        def __init__(self, **kwargs: Any) -> None:
            recorder.engine_kwargs.append(kwargs)

        def chat(self, messages, sampling_params=None, use_tqdm=True):  # type: ignore[no-untyped-def]
            number = len(recorder.chat_calls)
            recorder.chat_calls.append(ChatCall(messages, sampling_params, use_tqdm))
            if number in recorder.fail_on_call:
                raise recorder.fail_on_call[number]
            # shaped like vLLM's RequestOutput: .outputs[0].text
            return [
                types.SimpleNamespace(
                    prompt=None, outputs=[types.SimpleNamespace(text=recorder.reply(conv))]
                )
                for conv in messages
            ]

    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM  # type: ignore[attr-defined]
    fake.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setitem(sys.modules, "vllm", make_fake_vllm(recorder))
    return recorder


# --- helpers -------------------------------------------------------------------------------


def user_text(conversation: list[dict[str, Any]]) -> str:
    user = next(m for m in conversation if m["role"] == "user")
    return next(p["text"] for p in user["content"] if p["type"] == "text")


def make_png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), colour).save(path, format="PNG")
    return path


def corpus_request(image: Path | None, text: str = "item") -> VLMRequest:
    return CORPUS_CAPTION.request(text, image)


def query_request(image: Path) -> VLMRequest:
    return QUERY_CAPTION.request(None, image)


def modification_request(text: str) -> VLMRequest:
    return MODIFICATION.request(text)


def all_conversations(recorder: Recorder) -> list[list[dict[str, Any]]]:
    return [conv for call in recorder.chat_calls for conv in call.conversations]


def all_params(recorder: Recorder) -> list[dict[str, Any]]:
    return [p.kwargs for call in recorder.chat_calls for p in call.sampling_params]


# --- import and protocol -------------------------------------------------------------------


def test_importing_the_backend_does_not_import_vllm() -> None:
    code = (
        "import sys\n"
        "import rar_pipeline.core.enhance.vlm.vllm\n"
        "assert 'vllm' not in sys.modules, 'vllm was imported at module import'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_it_is_a_vlm_named_vllm_with_its_model_id() -> None:
    vlm = VLLMVLM(model_id="some-org/Some-VL-2B")
    assert isinstance(vlm, VLM)
    assert vlm.backend == "vllm"
    assert vlm.model_id == "some-org/Some-VL-2B"
    assert VLLMVLM().model_id == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_no_requests_means_no_engine(fake_vllm: Recorder) -> None:
    assert VLLMVLM().generate([]) == []
    assert fake_vllm.engine_kwargs == []


# --- the engine ----------------------------------------------------------------------------


def test_engine_is_built_with_the_default_settings(fake_vllm: Recorder, tmp_path: Path) -> None:
    VLLMVLM().generate([corpus_request(make_png(tmp_path / "a.png"))])

    assert fake_vllm.engine_kwargs == [
        {
            "model": "Qwen/Qwen2.5-VL-7B-Instruct",
            "trust_remote_code": False,
            "dtype": "auto",
            "max_model_len": 8192,
            "gpu_memory_utilization": 0.85,
            "tensor_parallel_size": 1,
            "limit_mm_per_prompt": {"image": 1},
            "seed": 0,
        }
    ]


def test_engine_settings_are_passed_through(fake_vllm: Recorder, tmp_path: Path) -> None:
    vlm = VLLMVLM(
        model_id="org/Other-VL",
        max_images_per_prompt=3,
        trust_remote_code=True,
        seed=11,
        config=VLLMConfig(
            max_model_len=4096,
            gpu_memory_utilization=0.5,
            tensor_parallel_size=2,
            dtype="bfloat16",
            max_num_seqs=8,
        ),
    )
    vlm.generate([corpus_request(make_png(tmp_path / "a.png"))])

    assert fake_vllm.engine_kwargs == [
        {
            "model": "org/Other-VL",
            "trust_remote_code": True,
            "dtype": "bfloat16",
            "max_model_len": 4096,
            "gpu_memory_utilization": 0.5,
            "tensor_parallel_size": 2,
            "limit_mm_per_prompt": {"image": 3},
            "seed": 11,
            "max_num_seqs": 8,
        }
    ]


def test_engine_is_built_once_across_generate_calls(fake_vllm: Recorder, tmp_path: Path) -> None:
    vlm = VLLMVLM()
    image = make_png(tmp_path / "a.png")
    vlm.load()
    for _ in range(3):
        vlm.generate([corpus_request(image)])

    assert len(fake_vllm.engine_kwargs) == 1
    assert len(fake_vllm.chat_calls) == 3


# --- chat calls and conversations ----------------------------------------------------------


def test_one_chat_call_per_batch(fake_vllm: Recorder, tmp_path: Path) -> None:
    images = [make_png(tmp_path / f"{i}.png") for i in range(5)]
    VLLMVLM(config=VLLMConfig(engine_batch_size=2)).generate(
        [corpus_request(p, f"item {i}") for i, p in enumerate(images)]
    )

    assert [len(call.conversations) for call in fake_vllm.chat_calls] == [2, 2, 1]
    for call in fake_vllm.chat_calls:
        assert call.use_tqdm is False
        assert len(call.sampling_params) == len(call.conversations)


def test_image_request_is_system_then_image_then_text(fake_vllm: Recorder, tmp_path: Path) -> None:
    image = make_png(tmp_path / "shape.png")
    request = corpus_request(image, "Listing 7. Price $9.99.")
    VLLMVLM().generate([request])

    [conversation] = all_conversations(fake_vllm)
    assert [m["role"] for m in conversation] == ["system", "user"]
    assert conversation[0]["content"] == request.system

    image_part, text_part = conversation[1]["content"]
    assert image_part["type"] == "image_url"
    url = image_part["image_url"]["url"]
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    assert base64.b64decode(payload) == image.read_bytes()
    assert text_part == {"type": "text", "text": request.user}


def test_text_only_request_carries_no_image_part(fake_vllm: Recorder) -> None:
    request = modification_request("make it blue and smaller")
    VLLMVLM().generate([request])

    [conversation] = all_conversations(fake_vllm)
    assert conversation == [
        {"role": "system", "content": request.system},
        {"role": "user", "content": [{"type": "text", "text": request.user}]},
    ]


# --- sampling parameters -------------------------------------------------------------------


def test_sampling_params_follow_each_request(fake_vllm: Recorder, tmp_path: Path) -> None:
    image = make_png(tmp_path / "a.png")
    seeded = VLMRequest(
        prompt="query_caption",
        system="s",
        user="u",
        image_path=image,
        sampling=SamplingParams(temperature=0.7, top_p=0.9, max_tokens=64, seed=1234),
    )
    VLLMVLM().generate(
        [corpus_request(image), query_request(image), modification_request("x"), seeded]
    )

    assert all_params(fake_vllm) == [
        {"temperature": 0.0, "top_p": 1.0, "max_tokens": 512, "seed": 0},
        {"temperature": 0.0, "top_p": 1.0, "max_tokens": 128, "seed": 0},
        {"temperature": 0.0, "top_p": 1.0, "max_tokens": 128, "seed": 0},
        {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 1234},
    ]
    assert all(
        isinstance(p, FakeSamplingParams) for c in fake_vllm.chat_calls for p in c.sampling_params
    )


# --- results -------------------------------------------------------------------------------


def test_outputs_map_back_in_order_and_stripped(fake_vllm: Recorder, tmp_path: Path) -> None:
    requests = [corpus_request(make_png(tmp_path / f"{i}.png"), f"item {i}") for i in range(5)]
    results = VLLMVLM(config=VLLMConfig(engine_batch_size=2)).generate(requests)

    assert results == [VLMResult(text=f"re: {r.user}") for r in requests]
    assert all(r.ok for r in results)


def test_missing_image_fails_only_its_request_and_is_not_sent(
    fake_vllm: Recorder, tmp_path: Path
) -> None:
    good = [corpus_request(make_png(tmp_path / f"{i}.png"), f"item {i}") for i in range(2)]
    missing = corpus_request(tmp_path / "nope.png", "missing")
    results = VLLMVLM().generate([good[0], missing, good[1]])

    assert results[0] == VLMResult(text=f"re: {good[0].user}")
    assert results[2] == VLMResult(text=f"re: {good[1].user}")
    assert results[1].text is None
    assert results[1].error and "nope.png" in results[1].error
    assert [user_text(c) for c in all_conversations(fake_vllm)] == [good[0].user, good[1].user]


def test_unreadable_image_fails_only_its_request(fake_vllm: Recorder, tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    ok = corpus_request(make_png(tmp_path / "ok.png"))
    results = VLLMVLM().generate([corpus_request(junk), ok])

    assert results[0].error is not None and not results[0].ok
    assert results[1] == VLMResult(text=f"re: {ok.user}")


def test_batch_of_only_unreadable_images_makes_no_chat_call(
    fake_vllm: Recorder, tmp_path: Path
) -> None:
    results = VLLMVLM().generate([corpus_request(tmp_path / "gone.png")])

    assert fake_vllm.chat_calls == []
    assert results[0].text is None
    assert results[0].error and f"cannot read image {tmp_path / 'gone.png'}" in results[0].error


def test_failed_chat_call_fails_its_batch_only(fake_vllm: Recorder, tmp_path: Path) -> None:
    fake_vllm.fail_on_call[1] = RuntimeError("CUDA out of memory")
    requests = [corpus_request(make_png(tmp_path / f"{i}.png"), f"item {i}") for i in range(5)]
    results = VLLMVLM(config=VLLMConfig(engine_batch_size=2)).generate(requests)

    assert len(fake_vllm.chat_calls) == 3
    assert results[0] == VLMResult(text=f"re: {requests[0].user}")
    assert results[1] == VLMResult(text=f"re: {requests[1].user}")
    assert (
        results[2] == results[3] == VLMResult(text=None, error="RuntimeError: CUDA out of memory")
    )
    assert results[4] == VLMResult(text=f"re: {requests[4].user}")


def test_wrong_number_of_outputs_fails_the_batch(fake_vllm: Recorder, tmp_path: Path) -> None:
    requests = [corpus_request(make_png(tmp_path / f"{i}.png")) for i in range(2)]
    vlm = VLLMVLM()
    vlm.load()
    vlm._llm.chat = lambda *args, **kwargs: []  # an engine that drops outputs

    results = vlm.generate(requests)

    assert [r.ok for r in results] == [False, False]
    assert all("0 outputs for 2" in (r.error or "") for r in results)


# --- vLLM missing --------------------------------------------------------------------------


def test_missing_vllm_raises_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match=r"\[gpu\] extra"):
        VLLMVLM().generate([corpus_request(make_png(tmp_path / "a.png"))])


# --- the GPU smoke benchmark, run against the fake -----------------------------------------


def load_smoke_script() -> types.ModuleType:
    path = REPO / "benchmarks" / "gpu_vllm_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_vllm_smoke", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_demo_pool(root: Path, n_images: int) -> Path:
    rows = [{"txt": "a brand story", "img_path": None, "modality": "text", "did": "50:1"}]
    for i in range(n_images):
        rel = f"mbeir_images/shop/test_{i:05d}.png"
        make_png(root / rel, (i * 40 % 256, 80, 120))
        rows.append({"txt": None, "img_path": rel, "modality": "image", "did": f"50:{i + 2}"})
    # the same image again in another task's pool: picked once
    rows.append({"txt": "Listing", "img_path": rows[1]["img_path"], "modality": "image,text"})
    pool = root / "cand_pool" / "local" / "mbeir_shop_task0_cand_pool.jsonl"
    pool.parent.mkdir(parents=True)
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_smoke_script_captions_demo_images(
    fake_vllm: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    smoke = load_smoke_script()
    data = make_demo_pool(tmp_path / "demo", n_images=4)

    assert smoke.main(["--data", str(data), "--n", "3", "--model", "org/Tiny-VL"]) == 0

    assert fake_vllm.engine_kwargs[0]["model"] == "org/Tiny-VL"
    conversations = all_conversations(fake_vllm)
    assert len(conversations) == 3
    assert all(c[0]["content"] == CORPUS_CAPTION.system for c in conversations)
    assert all(p["max_tokens"] == 512 for p in all_params(fake_vllm))
    out = capsys.readouterr().out
    assert "load" in out and "items/s" in out


def test_smoke_script_exits_2_without_vllm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    smoke = load_smoke_script()
    data = make_demo_pool(tmp_path / "demo", n_images=1)

    assert smoke.main(["--data", str(data)]) == 2
    assert "[gpu]" in capsys.readouterr().err
