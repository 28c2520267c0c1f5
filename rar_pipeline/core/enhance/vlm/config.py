"""The VLM's settings, in one place: the backend, its model, and a section per backend.

`create_vlm` builds a backend from a `VLMConfig`, and each backend takes its own section
(`OpenAIConfig`, `TransformersConfig`, `VLLMConfig`): a default is written here or nowhere.
The settings loader, `rar` flags, `VLMResource` and docs/configuration.md are made from
these fields (`core.config`).
"""

from __future__ import annotations

from pydantic import field_validator

from rar_pipeline.core.config import Section, setting

BACKENDS = ("offline", "transformers", "openai", "vllm")
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


class OpenAIConfig(Section):
    """openai backend: any OpenAI-compatible chat server (vLLM, SGLang, a hosted API)."""

    base_url: str = setting(
        "http://127.0.0.1:8000/v1",
        "the server's /v1 root; several, comma-separated, form a fleet",
        env="RAR_VLM_BASE_URL", flag="--vlm-base-url",
    )  # fmt: skip
    api_key_env: str = setting(
        "OPENAI_API_KEY", "the environment variable that holds the API key (none sent if unset)",
        env="RAR_VLM_API_KEY_ENV",
    )  # fmt: skip
    max_concurrency: int = setting(8, "requests in flight at once", ge=1, le=4096)
    timeout_s: float = setting(
        120.0, "seconds to wait on a server per attempt", env="RAR_VLM_TIMEOUT_S",
        flag="--vlm-timeout", gt=0, le=86_400,
    )  # fmt: skip
    max_retries: int = setting(3, "further HTTP attempts after the first", ge=0, le=100)
    backoff_s: float = setting(
        1.0, "base delay before a retry, in seconds (doubles, with jitter)", ge=0, le=3600
    )


class TransformersConfig(Section):
    """transformers backend: a Hugging Face vision-language model in this process."""

    device: str = setting(
        "auto", "auto | cpu | cuda | cuda:N", env="RAR_VLM_DEVICE", flag="--vlm-device"
    )
    dtype: str = setting("auto", "weight dtype; auto: bf16 on CUDA, fp32 on CPU")
    device_batch_size: int = setting(4, "requests per forward pass", ge=1, le=4096)
    local_files_only: bool = setting(False, "never reach the Hugging Face hub")
    revision: str = setting("", "hub revision; empty: the default branch")


class VLLMConfig(Section):
    """vllm backend: vLLM's offline engine in this process (the [gpu] extra)."""

    dtype: str = setting("auto", "weight dtype; auto follows the model config")
    max_model_len: int = setting(8192, "context length the engine plans for", ge=256)
    gpu_memory_utilization: float = setting(
        0.85, "share of GPU memory for weights and KV cache", gt=0, le=1
    )
    tensor_parallel_size: int = setting(1, "GPUs the model is split across", ge=1, le=64)
    max_num_seqs: int = setting(0, "sequences scheduled at once; 0 keeps vLLM's default", ge=0)
    engine_batch_size: int = setting(256, "conversations per LLM.chat call", ge=1)


class VLMConfig(Section):
    """The VLM that enhances items: which backend, which model, and each backend's knobs."""

    backend: str = setting(
        "offline", "which VLM enhances items: " + " | ".join(BACKENDS), flag="--vlm-backend"
    )
    model_id: str = setting(
        "", "model id; empty means the backend's default (Qwen/Qwen2.5-VL-7B-Instruct for "
        "the model backends)", env="RAR_VLM_MODEL", flag="--vlm-model",
    )  # fmt: skip
    trust_remote_code: bool = setting(
        False, "transformers and vllm: run the model repository's own code (arbitrary code: "
        "off unless asked for)",
    )  # fmt: skip
    openai: OpenAIConfig = OpenAIConfig()
    transformers: TransformersConfig = TransformersConfig()
    vllm: VLLMConfig = VLLMConfig()

    @field_validator("backend")
    @classmethod
    def _known(cls, backend: str) -> str:
        default_model_id(backend)  # refuses an unknown one
        return backend

    @property
    def resolved_model_id(self) -> str:
        return self.model_id or default_model_id(self.backend)


def default_model_id(backend: str) -> str:
    """The model a backend uses when none is named."""
    if backend == "offline":
        return "offline"
    if backend in ("transformers", "vllm", "openai"):
        return DEFAULT_MODEL
    raise ValueError(f"unknown VLM backend {backend!r}; choose one of {', '.join(BACKENDS)}")
