"""`create_vlm`: build any backend from a `VLMConfig` (or a backend name and knobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rar_pipeline.core import names
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.enhance.vlm.config import VLMConfig


def create_vlm(
    config: VLMConfig | str,
    *,
    captioner_dir: Path | None = None,
    perception_cache_dir: Path | None = None,
    seed: int = 0,
    **knobs: Any,
) -> VLM:
    """Build a VLM backend.

    Args:
        config: the backend and its settings, or a backend name (then `knobs` are
            `VLMConfig` fields, e.g. ``create_vlm("openai", base_url=...)``).
        captioner_dir: offline only: the caption memory fitted on the train split.
        perception_cache_dir: offline only: where image features and OCR are cached.
        seed: vllm only: the engine's seed (sampling seeds travel with each request).
        **knobs: `VLMConfig` fields, when `config` is a name.

    Raises:
        ValueError: an unknown backend or knob.
        FileNotFoundError: the offline backend's caption memory has not been fitted.
    """
    if isinstance(config, str):
        config = VLMConfig(backend=config, **knobs)
    elif knobs:
        raise ValueError("pass knobs inside the VLMConfig, not beside it")
    model = config.resolved_model_id
    if config.backend == "offline":
        from rar_pipeline.core.enhance.vlm.offline import CaptionMemory, OfflineVLM, Perceiver

        if captioner_dir is None or not CaptionMemory.exists(captioner_dir):
            raise FileNotFoundError(
                f"the offline backend needs its caption memory at {captioner_dir}: "
                + names.materialize(names.OFFLINE_CAPTIONER, first=True)
            )
        return OfflineVLM(CaptionMemory.load(captioner_dir), Perceiver(perception_cache_dir))
    if config.backend == "transformers":
        from rar_pipeline.core.enhance.vlm.transformers import TransformersVLM

        return TransformersVLM(
            model,
            device=config.device,
            dtype=config.dtype,
            batch_size=config.device_batch_size,
            trust_remote_code=config.trust_remote_code,
            local_files_only=config.local_files_only,
            revision=config.revision or None,
        )
    if config.backend == "openai":
        from rar_pipeline.core.enhance.vlm.openai import OpenAIVLM

        return OpenAIVLM(
            base_url=config.base_url,
            model_id=model,
            api_key_env=config.api_key_env,
            max_concurrency=config.max_concurrency,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
        )
    from rar_pipeline.core.enhance.vlm.vllm import VLLMVLM  # config checked the name

    return VLLMVLM(
        model,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
        tensor_parallel_size=config.tensor_parallel_size,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
        seed=seed,
        max_num_seqs=config.max_num_seqs or None,
        batch_size=config.engine_batch_size,
    )
