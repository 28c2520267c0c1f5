"""Every VLM backend knob and its default, in one place.

`create_vlm` builds a backend from a `VLMConfig`; the backends' own constructor defaults,
`VLMResource`'s fields and the settings table (`core.settings`) all take their defaults
from `DEFAULTS`, so a default is changed here or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("offline", "transformers", "openai", "vllm")
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


@dataclass(frozen=True)
class VLMConfig:
    """A backend and every setting it takes.

    Attributes:
        backend: offline | transformers | openai | vllm.
        model_id: the model; empty means the backend's default (`default_model_id`).
        trust_remote_code: transformers and vllm: run the model repository's own code (off
            unless asked for: it is arbitrary code).
        base_url: openai: the server's /v1 root; several, comma-separated, form a fleet.
        api_key_env: openai: the environment variable holding the API key.
        max_concurrency: openai: requests in flight at once.
        timeout_s: openai: socket timeout per attempt, in seconds.
        max_retries: openai: further HTTP attempts after the first.
        backoff_s: openai: base delay before a retry (doubles, with jitter).
        device: transformers: auto | cpu | cuda[:n].
        dtype: transformers and vllm: weight dtype; auto picks per device / model config.
        device_batch_size: transformers: requests per forward pass.
        local_files_only: transformers: never reach the hub.
        revision: transformers: hub revision; empty is the default branch.
        max_model_len: vllm: context length the engine plans for.
        gpu_memory_utilization: vllm: share of GPU memory for weights and KV cache.
        tensor_parallel_size: vllm: GPUs the model is split across.
        max_num_seqs: vllm: sequences scheduled at once; 0 keeps vLLM's default.
        engine_batch_size: vllm: conversations per `LLM.chat` call.
    """

    backend: str = "offline"
    model_id: str = ""
    trust_remote_code: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3
    backoff_s: float = 1.0
    device: str = "auto"
    dtype: str = "auto"
    device_batch_size: int = 4
    local_files_only: bool = False
    revision: str = ""
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    max_num_seqs: int = 0
    engine_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown VLM backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )

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


DEFAULTS = VLMConfig()
