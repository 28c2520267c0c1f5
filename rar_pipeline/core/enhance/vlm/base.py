"""The protocol every VLM backend implements: a batch of requests in, one result per request.

A backend never raises for one bad item: it returns a `VLMResult` with `error` set, and the
enhancer decides whether to retry. It may raise for whole-batch failures (model not found,
out of memory); the enhancer treats those as every item failing.

Backends open images through `core.corpus.images`, the one bounded opener; `image_error`
is the result for an image the opener refuses or that cannot be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rar_pipeline.core.corpus.images import ImageRefused


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings; part of the cache key and of the assets' code versions."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VLMRequest:
    """One generation request.

    Attributes:
        prompt: which prompt this is (`prompts.PromptSpec.name`): corpus_caption,
            query_caption, qa_rewrite or modification.
        system: the system prompt (the instructions).
        user: the user message text (the item's text, delimited as data).
        image_path: the item's image, already resolved inside the data root; None when the
            prompt must not see an image (text-only items, modification distillation).
        item_text: the item's own text, undecorated, for backends that work on structure
            rather than prompts (the offline backend).
        max_words: the output word cap the prompt states (enforced again afterwards).
        sampling: decoding settings.
    """

    prompt: str
    system: str
    user: str
    image_path: Path | None = None
    item_text: str | None = None
    max_words: int = 100
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class VLMResult:
    """The output for one request: text, or an error saying why not."""

    text: str | None
    error: str | None = None
    retryable: bool = True  # False: the backend already retried, or retrying cannot help

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.text and self.text.strip())


@runtime_checkable
class VLM(Protocol):
    """A vision-language model backend."""

    @property
    def backend(self) -> str:
        """Backend name: vllm, openai, transformers, offline, fake."""
        ...

    @property
    def model_id(self) -> str:
        """What produced the text; part of the cache key."""
        ...

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMResult]:
        """One result per request, in order."""
        ...


def chat_messages(request: VLMRequest, image: Any = None) -> list[dict[str, Any]]:
    """OpenAI-style chat messages for a request.

    Args:
        request: the request.
        image: how to put the image in the message: a data URL string for HTTP and vLLM
            backends (`image_url` part), or any object for in-process processors (an
            `image` part holding it). None sends no image part.
    """
    content: list[dict[str, Any]] = []
    if image is not None:
        if isinstance(image, str):
            content.append({"type": "image_url", "image_url": {"url": image}})
        else:
            content.append({"type": "image", "image": image})
    content.append({"type": "text", "text": request.user})
    # The system message is a plain string: some servers' chat templates accept only that.
    return [
        {"role": "system", "content": request.system},
        {"role": "user", "content": content},
    ]


def results_for_batch_error(requests: Sequence[VLMRequest], exc: BaseException) -> list[VLMResult]:
    """Every request failed for the same reason (a batch-level error)."""
    message = f"{type(exc).__name__}: {exc}"
    return [VLMResult(text=None, error=message) for _ in requests]


def image_error(request: VLMRequest, exc: BaseException) -> VLMResult:
    """The result of a request whose image cannot be opened (fails that request alone).

    A refused image (`ImageRefused`: too large, too thin) fails with its reason first and
    is not retried: the same file is refused again. Other errors (missing, truncated, not
    an image) name the image and the exception type.
    """
    if isinstance(exc, ImageRefused):
        return VLMResult(text=None, error=str(exc), retryable=False)
    return VLMResult(
        text=None,
        error=f"cannot read image {request.image_path}: {type(exc).__name__}: {exc}",
    )
