"""`create_vlm`: build any backend from a `VLMConfig`; each backend takes its own section."""

from __future__ import annotations

from pathlib import Path

from rar_pipeline.core import names
from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.enhance.vlm.config import VLMConfig


def create_vlm(
    config: VLMConfig,
    *,
    captioner_dir: Path | None = None,
    perception_cache_dir: Path | CacheRoot | None = None,
    seed: int = 0,
) -> VLM:
    """Build the VLM backend `config` names, with its own section of settings.

    Args:
        config: the backend, its model and each backend's section.
        captioner_dir: offline only: the caption memory fitted on the train split.
        perception_cache_dir: offline only: where image features and OCR are cached.
        seed: vllm only: the engine's seed (sampling seeds travel with each request).

    Raises:
        FileNotFoundError: the offline backend's caption memory has not been fitted.
    """
    model, remote = config.resolved_model_id, config.trust_remote_code
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

        return TransformersVLM(model, config=config.transformers, trust_remote_code=remote)
    if config.backend == "openai":
        from rar_pipeline.core.enhance.vlm.openai import OpenAIVLM

        return OpenAIVLM(model_id=model, config=config.openai)
    from rar_pipeline.core.enhance.vlm.vllm import VLLMVLM  # config checked the name

    return VLLMVLM(model, config=config.vllm, trust_remote_code=remote, seed=seed)
