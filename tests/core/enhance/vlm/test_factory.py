"""`create_vlm` builds the configured backend, handing it its own section of `VLMConfig`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from rar_pipeline.core.enhance.vlm.config import (
    BACKENDS,
    OpenAIConfig,
    TransformersConfig,
    VLLMConfig,
    VLMConfig,
    default_model_id,
)
from rar_pipeline.core.enhance.vlm.factory import create_vlm
from rar_pipeline.core.enhance.vlm.offline import CaptionMemory, OfflineVLM


def test_every_backend_is_built_without_loading_a_model(tmp_path: Path):
    CaptionMemory(np.zeros((1, 1280), dtype=np.float32), ["a red circle"]).save(tmp_path / "m")
    built = {b: create_vlm(VLMConfig(backend=b), captioner_dir=tmp_path / "m") for b in BACKENDS}
    assert {b: v.backend for b, v in built.items()} == {b: b for b in BACKENDS}
    assert isinstance(built["offline"], OfflineVLM)
    assert built["vllm"].model_id == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "vllm" not in sys.modules  # the engine is imported on first use only


def test_the_offline_backend_explains_a_missing_memory(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="offline_captioner"):
        create_vlm(VLMConfig(), captioner_dir=tmp_path / "nowhere")


def test_unknown_backends_and_knobs_are_refused():
    with pytest.raises(ValidationError, match="unknown VLM backend"):
        VLMConfig(backend="gpt-telepathy")
    with pytest.raises(ValueError, match="unknown VLM backend"):
        default_model_id("gpt-telepathy")
    with pytest.raises(ValidationError, match="timeout"):
        OpenAIConfig(timeout=3)  # the knob is timeout_s
    with pytest.raises(ValidationError, match="greater than 0"):
        OpenAIConfig(timeout_s=0)


def test_every_vllm_engine_knob_reaches_the_engine():
    engine = VLLMConfig(max_model_len=4096, gpu_memory_utilization=0.5, tensor_parallel_size=2,
                        dtype="bfloat16", max_num_seqs=64, engine_batch_size=16)  # fmt: skip
    config = VLMConfig(backend="vllm", model_id="org/model", trust_remote_code=True, vllm=engine)
    vlm = create_vlm(config, seed=5)
    assert vlm.engine_kwargs() == {
        "model": "org/model",
        "trust_remote_code": True,
        "dtype": "bfloat16",
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 2,
        "limit_mm_per_prompt": {"image": 1},
        "seed": 5,
        "max_num_seqs": 64,
    }
    assert vlm.config.engine_batch_size == 16
    default = create_vlm(VLMConfig(backend="vllm"))
    assert "max_num_seqs" not in default.engine_kwargs()  # 0 keeps vLLM's default


def test_openai_and_transformers_sections_reach_their_backends():
    server = OpenAIConfig(base_url="http://127.0.0.1:9/v1", timeout_s=7, max_retries=1,
                          backoff_s=0)  # fmt: skip
    openai = create_vlm(VLMConfig(backend="openai", openai=server))
    assert openai.config is server
    local = TransformersConfig(device="cpu", dtype="fp32", device_batch_size=2, revision="abc")
    transformers = create_vlm(VLMConfig(backend="transformers", transformers=local))
    assert transformers.config is local and not transformers.trust_remote_code


def test_a_default_is_written_once():
    assert create_vlm(VLMConfig(backend="openai")).config == OpenAIConfig()
    assert VLMConfig(backend="vllm").resolved_model_id == default_model_id("vllm")
    assert VLMConfig().resolved_model_id == "offline"
