"""A scripted VLM for tests, and the resource that hands it to the graph.

Deterministic outputs that honour each prompt's contract, switches to fail chosen items, and
a record of every request it was sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import PrivateAttr, field_validator

from rar_pipeline.core.enhance.vlm.base import VLM, VLMRequest, VLMResult
from rar_pipeline.core.enhance.vlm.config import VLMConfig
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.defs.resources.vlm import VLMResource


@dataclass
class FakeVLM:
    """Deterministic stand-in for a VLM.

    Attributes:
        model_id: part of cache keys.
        fail_first: marker -> how many times requests containing it (in the user text or the
            image file name) fail before succeeding; a large number fails them for good.
        answer_questions: misbehave on QA prompts by answering instead of rewriting.
        requests: every request received, in order.
    """

    model_id: str = "fake-vlm"
    fail_first: dict[str, int] = field(default_factory=dict)
    answer_questions: bool = False
    requests: list[VLMRequest] = field(default_factory=list)
    _failures: Counter = field(default_factory=Counter)

    backend = "fake"

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMResult]:
        """One scripted result per request."""
        self.requests.extend(requests)
        return [self._one(r) for r in requests]

    def _one(self, request: VLMRequest) -> VLMResult:
        haystack = f"{request.user} {request.image_path.name if request.image_path else ''}"
        for marker, times in self.fail_first.items():
            if marker in haystack and self._failures[marker] < times:
                self._failures[marker] += 1
                return VLMResult(None, f"scripted failure for {marker!r}")
        image = request.image_path.stem if request.image_path else "no-image"
        if request.prompt == "qa_rewrite":
            question = (request.item_text or "").strip()
            if self.answer_questions:
                return VLMResult("It was founded in 1962.")
            if question.endswith("?"):
                return VLMResult(f"{question[:-1]} (seen in {image})?")
            return VLMResult(f"{question} (seen in {image})")
        if request.prompt == "modification":
            return VLMResult(" ".join((request.item_text or "").split()[-3:]))
        return VLMResult(f"A picture of {image}. " + "word " * (request.max_words + 20))


class FakeVLMResource(VLMResource):
    """`VLMResource` whose backend is a `FakeVLM` shared across calls (tests count calls)."""

    backend: str = "fake"
    model_id: str = "fake-vlm"
    fail_first: dict[str, int] = {}
    _vlm: Any = PrivateAttr(default=None)

    @field_validator("backend")
    @classmethod
    def _known(cls, backend: str) -> str:
        return backend  # "fake" is no backend a person can choose

    def vlm_config(self) -> VLMConfig:
        return VLMConfig.model_validate(
            self.model_dump(exclude={"enhance", "fail_first"}) | {"backend": "offline"}
        )

    def resolved_model_id(self) -> str:
        return self.model_id

    @property
    def fake(self) -> FakeVLM:
        if self._vlm is None:
            self._vlm = FakeVLM(model_id=self.model_id, fail_first=dict(self.fail_first))
        return self._vlm

    def create(self, artifacts: ArtifactLayout) -> VLM:
        return self.fake
