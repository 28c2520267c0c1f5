"""What a generated text must be to be kept: each prompt's output contract.

Models wrap their answers ("Description: ...", quotes) and overrun caps; a QA rewrite may
answer its question instead of restating it. `check_output` cleans a generation and
applies its prompt's contract: the text to keep, or the reason it is refused (the item is
then retried, and keeps its own text if every attempt is refused).
"""

from __future__ import annotations

import re

from rar_pipeline.core.enhance.classify import CandidateType, QueryType
from rar_pipeline.core.enhance.prompts import PromptSpec

_PREAMBLE = re.compile(
    r"^\s*(description|caption|rewritten question|question|constraints|answer|output)\s*:\s*",
    re.IGNORECASE,
)


def cap_words(text: str, cap: int) -> str:
    """Keep at most `cap` words."""
    parts = text.split()
    return text.strip() if len(parts) <= cap else " ".join(parts[:cap])


def clean(text: str) -> str:
    """Strip a model's habitual wrapping: labels like "Description:", quotes, blank lines."""
    text = _PREAMBLE.sub("", text.strip())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return re.sub(r"\s+", " ", text).strip()


def check_output(
    spec: PromptSpec | None,
    item_type: CandidateType | QueryType,
    item_text: str | None,
    raw: str,
) -> tuple[str | None, str | None]:
    """Apply the prompt's contract to a generated text: (text, None) or (None, reason).

    `item_text`: the item's own text (a QA rewrite must keep asking its question).
    """
    assert spec is not None
    text = clean(raw)
    if not text:
        return None, "empty output"
    if item_type == QueryType.QA:
        question = (item_text or "").strip()
        limit = len(question.split()) + spec.max_words
        if len(text.split()) > limit:
            return None, f"rewrite adds more than {spec.max_words} words to the question"
        if question.endswith("?") and "?" not in text:
            return None, "rewrite no longer asks the question (it may answer it)"
        return text, None
    return cap_words(text, spec.max_words), None
