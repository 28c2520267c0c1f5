"""The transformers backend: an image-text-to-text model run in-process with Hugging Face.

Slower than vLLM but runs anywhere torch does (CPU included), so it is the backend for small
corpora, debugging and machines without CUDA. torch and transformers are imported on the
first `generate` (or `load`), never when this module is imported: importing transformers
alone takes seconds, and the rest of the pipeline must stay cheap to import.

What this relies on in transformers 5.20 (checked against its source and with a tiny LLaVA
built offline, see the tests):

- `AutoProcessor.from_pretrained` / `AutoModelForImageTextToText.from_pretrained` with
  `dtype=` (transformers 5 renamed `torch_dtype`), `trust_remote_code`, `local_files_only`
  and `revision`.
- `processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` only
  renders the Jinja template: an `{"type": "image", ...}` part becomes the model's image
  placeholder (`<image>`, `<|vision_start|><|image_pad|><|vision_end|>`, ...) whatever else
  the part holds, and the image itself is ignored (only `tokenize=True` loads images). So
  the images are passed separately to `processor(text=..., images=...)`, which expands each
  placeholder to the right number of image tokens.
- `processor(images=...)` takes a nested list, one list of images per text (the form
  `apply_chat_template` itself uses; "all processors can accept nested list of batches").
- Decoder-only `generate` returns the prompt followed by the new tokens, so with left
  padding the new tokens of every row start at the same column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from rar_pipeline.core.corpus.images import load_image
from rar_pipeline.core.enhance.vlm.base import (
    VLMRequest,
    VLMResult,
    chat_messages,
    image_error,
    results_for_batch_error,
)
from rar_pipeline.core.enhance.vlm.config import DEFAULT_MODEL, TransformersConfig

# Accepted `dtype` names and the torch dtype each means; checked in the constructor so a typo
# fails at configuration time, not minutes later when the model loads.
_DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


class _ItemError(Exception):
    """One request cannot be turned into model input; `result` is its error result."""

    def __init__(self, result: VLMResult) -> None:
        super().__init__(result.error)
        self.result = result


@dataclass
class _Prepared:
    """One request turned into processor input: its prompt text and its image (if any)."""

    index: int
    request: VLMRequest
    text: str
    image: Any

    @property
    def group(self) -> tuple[Any, ...]:
        """Requests that may share one `generate` call.

        Processors reject batches mixing items with and without images, and `generate`
        takes one decoding setting per call. `max_tokens` may differ: outputs are truncated
        to each request's own budget afterwards.
        """
        s = self.request.sampling
        decoding = ("greedy",) if s.temperature == 0 else ("sample", s.temperature, s.top_p, s.seed)
        return (self.image is not None, *decoding)


@dataclass(eq=False)
class TransformersVLM:
    """A VLM backend running an image-text-to-text model in-process with transformers.

    The processor and model are loaded once, on the first `generate` (or `load`), and kept.
    Requests are batched `batch_size` at a time, those with an image separately from those
    without and greedy ones separately from sampled ones (each distinct sampling setting is
    its own group); results come back in the order of the requests.

    Decoding starts from the model's own generation config (its EOS ids, repetition
    penalty, ...), overridden by each request's `SamplingParams`: temperature 0 is greedy;
    otherwise sampling with its temperature and top_p only (top-k off) after
    `torch.manual_seed(seed)`. A sampled output depends on the whole batch it ran in, so it
    is reproducible for the same batch, not per request.

    Args:
        model_id: a Hugging Face model id or local path of any image-text-to-text model with
            a multimodal processor; Qwen2.5-VL-7B-Instruct by default.
        config: the backend's settings (`TransformersConfig`: device, dtype, requests per
            forward pass, offline loading, revision). "auto" device is cuda when available,
            else cpu; "auto" dtype is bfloat16 on cuda (float16 where the GPU lacks
            bfloat16) and float32 on cpu.
        trust_remote_code: allow the model repository's own Python code. Off unless asked
            for: it runs arbitrary code from the repository.

    Raises:
        ValueError: `dtype` is not a known name.
    """

    backend = "transformers"

    model_id: str = DEFAULT_MODEL
    _: KW_ONLY
    config: TransformersConfig = TransformersConfig()
    trust_remote_code: bool = False
    _torch: Any = field(default=None, init=False, repr=False)
    _processor: Any = field(default=None, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)
    _device: Any = field(default=None, init=False, repr=False)  # the resolved torch device

    def __post_init__(self) -> None:
        dtype = self.config.dtype
        if dtype != "auto" and dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use auto or one of {sorted(_DTYPES)}")

    def load(self) -> None:
        """Load the processor and model now, if not done yet (to time or warm them up).

        Raises:
            TypeError: the model has no multimodal processor (`AutoProcessor` returned a
                bare tokenizer).
            OSError: the model cannot be found (or not offline, with `local_files_only`).
        """
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = self._resolve_device(torch)
        dtype = self._resolve_dtype(torch, device)
        # Passed explicitly to both calls: remote code stays off unless the caller asked.
        common = {
            "trust_remote_code": self.trust_remote_code,
            "local_files_only": self.config.local_files_only,
            "revision": self.config.revision or None,
        }
        processor = AutoProcessor.from_pretrained(self.model_id, **common)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            # AutoProcessor falls back to the tokenizer alone when the processor class cannot
            # be built (e.g. Qwen2-VL's needs torchvision for its video processor), and a
            # tokenizer silently drops images.
            raise TypeError(
                f"AutoProcessor loaded a {type(processor).__name__} for {self.model_id!r}, "
                "not a multimodal processor: the model is not image-text-to-text, or its "
                "processor's dependencies (e.g. torchvision) are missing"
            )
        # Decoder-only models continue from the last column: padding must go on the left.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=dtype, **common)
        model.eval()
        model.to(device)
        self._torch = torch
        self._processor = processor
        self._device = device
        self._model = model

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMResult]:
        """One result per request, in order.

        A request whose image cannot be read (or whose prompt cannot be rendered) gets an
        error result and is not sent; a failing `generate` call turns only its own batch
        into error results.

        Args:
            requests: the requests, any mix of image and text-only ones.

        Returns:
            One `VLMResult` per request, in the order of `requests`.

        Raises:
            TypeError: the model has no multimodal processor.
            OSError: the model cannot be loaded.
        """
        if not requests:
            return []
        self.load()
        results: list[VLMResult | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[_Prepared]] = {}
        for index, request in enumerate(requests):
            try:
                item = self._prepare(index, request)
            except _ItemError as exc:  # a bad item fails alone; the others still run
                results[index] = exc.result
                continue
            groups.setdefault(item.group, []).append(item)

        for items in groups.values():
            for start in range(0, len(items), self.config.device_batch_size):
                batch = items[start : start + self.config.device_batch_size]
                try:
                    texts = self._generate_batch(batch)
                except Exception as exc:  # this batch fails; the next batches still run
                    failed = results_for_batch_error([item.request for item in batch], exc)
                    for item, result in zip(batch, failed, strict=True):
                        results[item.index] = result
                else:
                    for item, text in zip(batch, texts, strict=True):
                        results[item.index] = VLMResult(text=text)
        done = [r for r in results if r is not None]
        if len(done) != len(requests):  # every request gets exactly one branch above
            raise RuntimeError(f"{len(done)} results for {len(requests)} requests")
        return done

    def _prepare(self, index: int, request: VLMRequest) -> _Prepared:
        image = None
        if request.image_path is not None:
            try:
                image = load_image(request.image_path)
            except Exception as exc:
                raise _ItemError(image_error(request, exc)) from exc
        # The image part only selects the template's placeholder (see the module docstring);
        # the image itself goes to the processor call.
        messages = chat_messages(request, image=image)
        try:
            text = self._processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:
            error = f"cannot render the chat template: {type(exc).__name__}: {exc}"
            raise _ItemError(VLMResult(text=None, error=error)) from exc
        return _Prepared(index=index, request=request, text=text, image=image)

    def _generate_batch(self, batch: Sequence[_Prepared]) -> list[str]:
        torch = self._torch
        tokenizer = self._processor.tokenizer
        texts = [item.text for item in batch]
        images = [[item.image] for item in batch if item.image is not None]
        kwargs: dict[str, Any] = {}
        bos = tokenizer.bos_token
        if bos and any(text.startswith(bos) for text in texts):
            # The template already wrote BOS (Llama 3, Gemma): don't let the tokenizer add a
            # second one, which degrades output (apply_chat_template does the same).
            kwargs["add_special_tokens"] = False
        inputs = self._processor(
            text=texts, images=images or None, padding=True, return_tensors="pt", **kwargs
        )
        # Floating inputs (pixel values) follow the model's dtype; ids stay integer.
        inputs = inputs.to(self._device, dtype=self._model.dtype)

        budgets = [item.request.sampling.max_tokens for item in batch]
        sampling = batch[0].request.sampling  # one decoding setting per group
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max(budgets)}
        if tokenizer.pad_token_id is not None:
            gen_kwargs["pad_token_id"] = tokenizer.pad_token_id
        if sampling.temperature == 0:
            gen_kwargs["do_sample"] = False
        else:
            # top_k=0 turns top-k off: otherwise transformers fills in 50 (or the model's
            # own: some VLMs ship top_k=1, which makes "sampling" greedy) and temperature
            # and top_p would not be the whole story.
            gen_kwargs.update(
                do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
            )
            torch.manual_seed(sampling.seed)

        with torch.inference_mode():
            sequences = self._model.generate(**inputs, **gen_kwargs)
        if getattr(self._model.config, "is_encoder_decoder", False):
            # Encoder-decoder output is the decoder start token, then the new tokens.
            new_tokens = sequences[:, 1:]
        else:
            new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
        # The batch ran to its largest budget: cut every row to its own, in tokens.
        return [
            tokenizer.decode(row[:budget], skip_special_tokens=True).strip()
            for row, budget in zip(new_tokens, budgets, strict=True)
        ]

    def _resolve_device(self, torch: Any) -> Any:
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    def _resolve_dtype(self, torch: Any, device: Any) -> Any:
        if self.config.dtype != "auto":
            return getattr(torch, _DTYPES[self.config.dtype.lower()])
        if device.type == "cuda":
            # bfloat16 keeps float32's range; older GPUs without it get float16.
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # CPU half-precision matmuls are slow or missing: float32 there.
        return torch.float32
