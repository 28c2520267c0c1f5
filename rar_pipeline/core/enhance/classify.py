"""Corpus and query types, exactly as the method defines them.

Candidates: text-only, image-only, image+text. Queries: text-only, image-only, and image+text
queries split into QA-style (resolve references with the image) and modification-style
(distil the constraints from the text alone). The split follows the reference code's text
rule: a question mark at the end, or a leading what/where/why/when/which/how, means QA;
anything else is a modification. A task can override the rule in config.
"""

from __future__ import annotations

import re
from enum import StrEnum

from rar_pipeline.core.corpus.records import Candidate, Modality, Query

_QA_START = re.compile(r"^\W*(what|where|why|when|which|how)\b", re.IGNORECASE)


class CandidateType(StrEnum):
    """How a candidate is enhanced."""

    TEXT = "text"  # passes through unchanged, never sent to a VLM
    IMAGE = "image"  # replaced by a dense caption
    IMAGE_TEXT = "image_text"  # keeps its text, gains "Visual Context: <caption>"


class QueryType(StrEnum):
    """How a query is enhanced."""

    TEXT = "text"  # passes through unchanged, never sent to a VLM
    IMAGE = "image"  # a short caption
    QA = "qa"  # references resolved with the image, never answered
    MODIFICATION = "modification"  # constraints distilled from the text alone


def is_question(text: str) -> bool:
    """The reference code's rule for image+text queries: QA if this holds."""
    stripped = text.strip()
    return stripped.endswith("?") or bool(_QA_START.match(stripped))


def classify_candidate(candidate: Candidate) -> CandidateType:
    """The candidate's type, from its modality."""
    return {
        Modality.TEXT: CandidateType.TEXT,
        Modality.IMAGE: CandidateType.IMAGE,
        Modality.IMAGE_TEXT: CandidateType.IMAGE_TEXT,
    }[candidate.modality]


def classify_query(query: Query, override: QueryType | str | None = None) -> QueryType:
    """The query's type.

    Args:
        query: the query.
        override: for image+text queries, force QA or modification (a task whose phrasing
            the text rule gets wrong); ignored for text-only and image-only queries.
    """
    if query.modality is Modality.TEXT:
        return QueryType.TEXT
    if query.modality is Modality.IMAGE:
        return QueryType.IMAGE
    if override is not None:
        forced = QueryType(override)
        if forced not in (QueryType.QA, QueryType.MODIFICATION):
            raise ValueError(
                f"an image+text query can only be forced to qa or modification, "
                f"not {forced.value!r}"
            )
        return forced
    return QueryType.QA if is_question(query.txt or "") else QueryType.MODIFICATION
