"""`create_vlm`: build any backend from plain settings (config, CLI, resources)."""

from __future__ import annotations

from pathlib import Path

from rar_pipeline.core.enhance.vlm.base import VLM

BACKENDS = ("offline", "transformers", "openai", "vllm")
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def default_model_id(backend: str) -> str:
    """The model a backend uses when none is named."""
    if backend == "offline":
        return "offline"
    if backend in ("transformers", "vllm", "openai"):
        return DEFAULT_MODEL
    raise ValueError(f"unknown VLM backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def create_vlm(
    backend: str,
    *,
    model_id: str | None = None,
    memory_dir: Path | None = None,
    perception_cache_dir: Path | None = None,
    base_url: str = "http://127.0.0.1:8000/v1",
    api_key_env: str = "OPENAI_API_KEY",
    max_concurrency: int = 8,
    timeout_s: float = 120.0,
    device: str = "auto",
    batch_size: int = 8,
    trust_remote_code: bool = False,
) -> VLM:
    """Build a VLM backend.

    Args:
        backend: offline | transformers | openai | vllm.
        model_id: the model (default: Qwen/Qwen2.5-VL-7B-Instruct for the model backends).
        memory_dir: offline only: the caption memory fitted on the train split.
        perception_cache_dir: offline only: where image features and OCR are cached.
        base_url: openai only: the server's /v1 URL.
        api_key_env: openai only: the env var holding the API key.
        max_concurrency: openai only: requests in flight.
        timeout_s: openai only: per-request timeout.
        device: transformers only: auto | cpu | cuda.
        batch_size: transformers only: requests per forward pass.
        trust_remote_code: transformers / vllm: run model code from the hub (off by default).
    """
    model = model_id or default_model_id(backend)
    if backend == "offline":
        from rar_pipeline.core.enhance.vlm.offline import CaptionMemory, OfflineVLM, Perceiver

        if memory_dir is None or not (memory_dir / "texts.json").is_file():
            raise FileNotFoundError(
                f"the offline backend needs its caption memory at {memory_dir}: materialize "
                "the offline_captioner asset first"
            )
        return OfflineVLM(CaptionMemory.load(memory_dir), Perceiver(perception_cache_dir))
    if backend == "transformers":
        from rar_pipeline.core.enhance.vlm.transformers import TransformersVLM

        return TransformersVLM(
            model, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code
        )
    if backend == "openai":
        from rar_pipeline.core.enhance.vlm.openai import OpenAIVLM

        return OpenAIVLM(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
        )
    if backend == "vllm":
        from rar_pipeline.core.enhance.vlm.vllm import VLLMVLM

        return VLLMVLM(model, trust_remote_code=trust_remote_code)
    raise ValueError(f"unknown VLM backend {backend!r}; choose one of {', '.join(BACKENDS)}")
