"""Hallucination guard: entities a generated text asserts against the item's own text.

Named entities in a generated text that contradict the item's own text are flagged, then
kept, stripped or dropped by policy.

An entity contradicts when the item's own text names entities of the same kind (proper
names, or numbers such as prices and years) and this one is not among them: a caption that
says "$4.99" for a listing whose text says "$9.99", or "Lake Como" for a question about
"Geneva". Entities of a kind the own text never mentions are new information, not
contradictions (a brand read off a label), and are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Capitalised words that start no sentence and are not everyday words: proper names.
_COMMON = {
    "a", "an", "the", "this", "that", "these", "those", "it", "its", "i", "visual", "context",
    "visible", "text", "colours", "colors", "printed", "label", "image", "photo", "picture",
    "description", "question", "request", "what", "which", "who", "whose", "where", "when",
    "why", "how", "is", "are", "in", "on", "of", "and", "or", "with", "by", "from", "for",
}  # fmt: skip
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+")
_NUMBER = re.compile(r"[$€£]?\d+(?:[.,]\d+)*%?")


class GuardPolicy(StrEnum):
    """What to do with a contradicting entity."""

    KEEP = "keep"  # flag it, keep the text as generated
    STRIP = "strip"  # remove the contradicting tokens
    DROP = "drop"  # discard the generated text; the item keeps only its own text


@dataclass(frozen=True)
class GuardResult:
    """The text after the policy, and what was flagged."""

    text: str | None
    flagged: tuple[str, ...]
    dropped: bool


def entities(text: str) -> dict[str, set[str]]:
    """Proper names and numbers in a text, lower-cased for comparison."""
    names: set[str] = set()
    for sentence in re.split(r"(?<=[.!?:;])\s+|\n+", text):
        words = _WORD.findall(sentence)
        for position, word in enumerate(words):
            if position == 0 or word.lower() in _COMMON:
                continue
            if word[0].isupper():
                names.add(word.lower())
    numbers = {n.lstrip("$€£").rstrip("%") for n in _NUMBER.findall(text)}
    return {"name": names, "number": numbers}


def contradictions(generated: str, own_text: str | None) -> list[str]:
    """Entities of `generated` that contradict `own_text` (see the module docstring)."""
    if not own_text:
        return []
    own = entities(own_text)
    found = entities(generated)
    flagged: list[str] = []
    for kind in ("name", "number"):
        if own[kind]:
            flagged += sorted(e for e in found[kind] - own[kind] if not _mentions(own_text, e))
    return flagged


def _mentions(text: str, entity: str) -> bool:
    """Whether `text` mentions `entity` as a whole word (so 9.99 is not found in 19.99)."""
    return re.search(rf"(?<![\w.,]){re.escape(entity)}(?![\w]|[.,]\d)", text, re.I) is not None


def apply_guard(generated: str, own_text: str | None, policy: GuardPolicy) -> GuardResult:
    """Apply `policy` to the contradicting entities of `generated`."""
    flagged = tuple(contradictions(generated, own_text))
    if not flagged or policy is GuardPolicy.KEEP:
        return GuardResult(text=generated, flagged=flagged, dropped=False)
    if policy is GuardPolicy.DROP:
        return GuardResult(text=None, flagged=flagged, dropped=True)
    stripped = generated
    for entity in flagged:
        stripped = re.sub(
            rf"(?<![\w$€£]){re.escape(entity)}(?!\w)|[$€£]{re.escape(entity)}(?!\w)",
            "",
            stripped,
            flags=re.IGNORECASE,
        )
    stripped = re.sub(r"\s{2,}", " ", stripped).strip()
    return GuardResult(text=stripped, flagged=flagged, dropped=False)
