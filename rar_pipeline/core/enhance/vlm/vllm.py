"""The vLLM backend: an image-text-to-text model run in-process with vLLM's offline engine.

vLLM ships CUDA wheels only (the `[gpu]` extra), so it is imported lazily, on the first
`generate`, never when this module is imported: the rest of the pipeline and its tests run
on machines without it.

What this relies on, confirmed against vLLM's own source and docs:

- `vllm.LLM(model, *, trust_remote_code, dtype, tensor_parallel_size, seed,
  gpu_memory_utilization, **engine_kwargs)`, with `max_model_len`, `max_num_seqs` and
  `limit_mm_per_prompt` passed through to `EngineArgs` (vllm/entrypoints/llm.py in
  vllm-project/vllm; docs.vllm.ai "LLM Class").
- `limit_mm_per_prompt` is a dict of modality to count, e.g. `{"image": 1}`
  (`MultiModalConfig.limit_per_prompt: dict[str, int]`, docs.vllm.ai v0.11 API
  vllm.config.multimodal; every example in examples/offline_inference/
  vision_language_multi_image.py, including the Qwen2.5-VL one, passes
  `limit_mm_per_prompt={"image": n}`). Recent releases accept the same int form.
- `LLM.chat(messages, sampling_params=None, use_tqdm=True, ...)` takes one conversation or a
  list of conversations; a list of `SamplingParams` "must have the same length as the
  prompts and it is paired one by one"; it returns `RequestOutput`s "in the same order as
  the input messages", the text in `.outputs[0].text` (the `chat` docstring in
  vllm/entrypoints/llm.py).
- Multimodal chat input uses OpenAI-style parts, `{"type": "image_url", "image_url":
  {"url": ...}}`, passed "in the same way you would pass them to the OpenAI API" (same
  docstring; `run_chat` in vision_language_multi_image.py). A `data:` URL keeps images
  local: nothing is fetched over the network.
- `vllm.SamplingParams(temperature=..., top_p=..., max_tokens=..., seed=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from rar_pipeline.core.corpus.images import image_data_url
from rar_pipeline.core.enhance.vlm.base import (
    VLMRequest,
    VLMResult,
    chat_messages,
    image_error,
    results_for_batch_error,
)
from rar_pipeline.core.enhance.vlm.config import DEFAULT_MODEL, VLLMConfig

_INSTALL_HINT = (
    "the vllm backend needs vLLM, which is not installed: install the [gpu] extra on a "
    "CUDA machine (pip install 'rar_pipeline[gpu]'), or choose another VLM backend"
)


@dataclass(eq=False)
class VLLMVLM:
    """A VLM backend running an image-text-to-text model with vLLM's offline `LLM.chat`.

    The engine is built once, on the first `generate` (or `load`), and reused: building it
    loads the weights and profiles GPU memory, which takes minutes.

    Args:
        model_id: a Hugging Face model id or local path of any image-text-to-text model
            vLLM supports; Qwen2.5-VL-7B-Instruct by default.
        config: the engine's settings (`VLLMConfig`: dtype, context length, GPU memory
            share, tensor parallelism, scheduled sequences, conversations per `chat` call:
            vLLM batches internally, that one only bounds how many conversations, with
            their image data URLs, are held in memory at once).
        trust_remote_code: allow model repositories' own Python code (off: only models
            vLLM implements natively run).
        seed: the engine's seed.
        max_images_per_prompt: the engine's `limit_mm_per_prompt` for images; every prompt
            of the method sends at most one.
    """

    backend = "vllm"

    model_id: str = DEFAULT_MODEL
    _: KW_ONLY
    config: VLLMConfig = VLLMConfig()
    trust_remote_code: bool = False
    seed: int = 0
    max_images_per_prompt: int = 1
    _vllm: Any = field(default=None, init=False, repr=False)
    _llm: Any = field(default=None, init=False, repr=False)

    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `vllm.LLM` is built with."""
        kwargs: dict[str, Any] = {
            "model": self.model_id,
            "trust_remote_code": self.trust_remote_code,
            "dtype": self.config.dtype,
            "max_model_len": self.config.max_model_len,
            "gpu_memory_utilization": self.config.gpu_memory_utilization,
            "tensor_parallel_size": self.config.tensor_parallel_size,
            "limit_mm_per_prompt": {"image": self.max_images_per_prompt},
            "seed": self.seed,
        }
        # Only when set: vLLM picks a default that depends on the GPU and engine version.
        if self.config.max_num_seqs:
            kwargs["max_num_seqs"] = self.config.max_num_seqs
        return kwargs

    def load(self) -> None:
        """Import vLLM and build the engine now, if not done yet (to time or warm it up).

        Raises:
            ImportError: vLLM is not installed.
        """
        if self._llm is not None:
            return
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._vllm = vllm
        self._llm = vllm.LLM(**self.engine_kwargs())

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMResult]:
        """One result per request, in order.

        A request whose image cannot be read gets an error result and is not sent; a
        failed `chat` call turns only its own batch into error results.

        Raises:
            ImportError: vLLM is not installed.
        """
        if not requests:
            return []
        self.load()
        results: list[VLMResult] = []
        size = self.config.engine_batch_size
        for start in range(0, len(requests), size):
            results.extend(self._generate_batch(requests[start : start + size]))
        return results

    def _generate_batch(self, batch: Sequence[VLMRequest]) -> list[VLMResult]:
        results: list[VLMResult | None] = [None] * len(batch)
        sent: list[int] = []
        conversations: list[list[dict[str, Any]]] = []
        params: list[Any] = []
        for i, request in enumerate(batch):
            try:
                conversation = self._conversation(request)
            except Exception as exc:  # any unreadable or refused image fails its own item only
                results[i] = image_error(request, exc)
                continue
            sent.append(i)
            conversations.append(conversation)
            params.append(self._sampling_params(request))

        if sent:
            try:
                outputs = self._llm.chat(conversations, sampling_params=params, use_tqdm=False)
                if len(outputs) != len(sent):
                    # Pairing outputs to requests by position would be wrong: fail the batch.
                    raise RuntimeError(
                        f"vLLM returned {len(outputs)} outputs for {len(sent)} conversations"
                    )
            except Exception as exc:  # this batch fails; the next batches still run
                failed = results_for_batch_error([batch[i] for i in sent], exc)
                for i, result in zip(sent, failed, strict=True):
                    results[i] = result
            else:
                for i, output in zip(sent, outputs, strict=True):
                    results[i] = _result_of(output)
        return [r for r in results if r is not None]

    def _conversation(self, request: VLMRequest) -> list[dict[str, Any]]:
        if request.image_path is None:
            return chat_messages(request)
        return chat_messages(request, image_data_url(request.image_path))

    def _sampling_params(self, request: VLMRequest) -> Any:
        s = request.sampling
        return self._vllm.SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed
        )


def _result_of(output: Any) -> VLMResult:
    """The text of a vLLM `RequestOutput` (its first completion), stripped."""
    completions = getattr(output, "outputs", None)
    if not completions:
        return VLMResult(text=None, error="vLLM returned no completion for this request")
    return VLMResult(text=completions[0].text.strip())
