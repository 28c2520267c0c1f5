"""`create_vlm` builds the configured backend with every knob of `VLMConfig`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from rar_pipeline.core.enhance.vlm.config import BACKENDS, DEFAULTS, VLMConfig, default_model_id
from rar_pipeline.core.enhance.vlm.factory import create_vlm
from rar_pipeline.core.enhance.vlm.offline import CaptionMemory, OfflineVLM


def test_every_backend_is_built_without_loading_a_model(tmp_path: Path):
    CaptionMemory(np.zeros((1, 1280), dtype=np.float32), ["a red circle"]).save(tmp_path / "m")
    built = {
        b: create_vlm(b, captioner_dir=tmp_path / "m", base_url="http://127.0.0.1:9/v1")
        for b in BACKENDS
    }
    assert {b: v.backend for b, v in built.items()} == {b: b for b in BACKENDS}
    assert isinstance(built["offline"], OfflineVLM)
    assert built["vllm"].model_id == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "vllm" not in sys.modules  # the engine is imported on first use only


def test_the_offline_backend_explains_a_missing_memory(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="offline_captioner"):
        create_vlm("offline", captioner_dir=tmp_path / "nowhere")


def test_unknown_backends_and_knobs_are_refused():
    with pytest.raises(ValueError, match="unknown VLM backend"):
        create_vlm("gpt-telepathy")
    with pytest.raises(ValueError, match="unknown VLM backend"):
        default_model_id("gpt-telepathy")
    with pytest.raises(TypeError):
        create_vlm("openai", timeout=3)  # the knob is timeout_s


def test_every_vllm_engine_knob_reaches_the_engine():
    config = VLMConfig(
        backend="vllm",
        model_id="org/model",
        max_model_len=4096,
        gpu_memory_utilization=0.5,
        tensor_parallel_size=2,
        dtype="bfloat16",
        max_num_seqs=64,
        engine_batch_size=16,
        trust_remote_code=True,
    )
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
    assert vlm.batch_size == 16
    assert "max_num_seqs" not in create_vlm("vllm").engine_kwargs()  # 0 keeps vLLM's default


def test_openai_and_transformers_knobs_reach_their_backends():
    openai = create_vlm(
        "openai", base_url="http://127.0.0.1:9/v1", timeout_s=7, max_retries=1, backoff_s=0
    )
    assert (openai.timeout_s, openai.max_retries, openai.backoff_s) == (7.0, 1, 0.0)
    local = create_vlm(
        "transformers", device="cpu", dtype="fp32", device_batch_size=2, revision="abc"
    )
    assert (local.device, local.dtype, local.batch_size, local.revision) == (
        "cpu",
        "fp32",
        2,
        "abc",
    )


def test_backends_take_their_defaults_from_the_one_config():
    openai = create_vlm("openai")
    assert openai.timeout_s == DEFAULTS.timeout_s
    assert openai.max_concurrency == DEFAULTS.max_concurrency
    assert dataclasses.replace(DEFAULTS, backend="vllm").resolved_model_id == default_model_id(
        "vllm"
    )
    assert VLMConfig().resolved_model_id == "offline"
