"""`create_vlm` and the resource built from the environment choose the configured backend."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from rar_pipeline.core.enhance.vlm.factory import BACKENDS, create_vlm, default_model_id
from rar_pipeline.core.enhance.vlm.offline import CaptionMemory, OfflineVLM
from rar_pipeline.defs.resources import VLMResource, vlm_from_env


def test_every_backend_is_built_without_loading_a_model(tmp_path: Path):
    CaptionMemory(np.zeros((1, 1280), dtype=np.float32), ["a red circle"]).save(tmp_path / "m")
    built = {
        b: create_vlm(b, memory_dir=tmp_path / "m", base_url="http://127.0.0.1:9/v1")
        for b in BACKENDS
    }
    assert {b: v.backend for b, v in built.items()} == {b: b for b in BACKENDS}
    assert isinstance(built["offline"], OfflineVLM)
    assert built["vllm"].model_id == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "vllm" not in sys.modules  # the engine is imported on first use only


def test_the_offline_backend_explains_a_missing_memory(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="offline_captioner"):
        create_vlm("offline", memory_dir=tmp_path / "nowhere")


def test_unknown_backends_are_refused():
    with pytest.raises(ValueError, match="unknown VLM backend"):
        create_vlm("gpt-telepathy")
    with pytest.raises(ValueError, match="unknown VLM backend"):
        default_model_id("gpt-telepathy")


def test_the_resource_reads_its_settings_from_the_environment():
    resource = vlm_from_env(
        {
            "RAR_VLM_BACKEND": "openai",
            "RAR_VLM_MODEL": "org/model",
            "RAR_VLM_BASE_URL": "http://127.0.0.1:8000/v1",
            "RAR_HALLUCINATION_POLICY": "drop",
        }
    )
    assert (resource.backend, resource.resolved_model_id(), resource.policy().value) == (
        "openai",
        "org/model",
        "drop",
    )
    assert vlm_from_env({}).backend == "offline"
    assert VLMResource().resolved_model_id() == "offline"
    assert "model=org/model" in resource.version_fields()
