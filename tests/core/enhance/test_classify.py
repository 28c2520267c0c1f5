"""Corpus and query types, as the method defines them.

Candidates are typed by modality. Queries: text-only and image-only by modality; image+text
queries by the reference code's text rule (ends with '?' or starts with one of the words
what/where/why/when/which/how -> QA, anything else -> modification), unless a task forces
one of the two.
"""

from __future__ import annotations

import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.enhance.classify import (
    CandidateType,
    QueryType,
    classify_candidate,
    classify_query,
    is_question,
)


def _candidate(modality: Modality) -> Candidate:
    return Candidate(
        did="50:1",
        modality=modality,
        txt="Listing 1001. Price $9.99." if modality.has_text else None,
        img_path="img/a.png" if modality.has_image else None,
    )


def _query(modality: Modality, txt: str | None = None) -> Query:
    return Query(
        qid="50:9",
        modality=modality,
        txt=(txt if txt is not None else "a teal triangle") if modality.has_text else None,
        img_path="img/q.png" if modality.has_image else None,
        pos_cand_list=("50:1",),
    )


# ---------------------------------------------------------------------------
# candidates


@pytest.mark.parametrize(
    ("modality", "expected"),
    [
        (Modality.TEXT, CandidateType.TEXT),
        (Modality.IMAGE, CandidateType.IMAGE),
        (Modality.IMAGE_TEXT, CandidateType.IMAGE_TEXT),
    ],
)
def test_candidate_type_follows_modality(modality: Modality, expected: CandidateType):
    assert classify_candidate(_candidate(modality)) is expected


# ---------------------------------------------------------------------------
# queries


def test_text_only_query_is_text_whatever_it_says():
    assert classify_query(_query(Modality.TEXT, "what lake is this?")) is QueryType.TEXT
    assert classify_query(_query(Modality.TEXT, "make it red")) is QueryType.TEXT


def test_image_only_query_is_image():
    assert classify_query(_query(Modality.IMAGE)) is QueryType.IMAGE


QA_PHRASINGS = [
    "what lake is this",
    "Where was this made",
    "WHY is it red",
    "When did this brand open",
    "which brand makes this",
    "How old is the brand on this box",
    "  what is this",  # leading space
    "...what is this",  # leading punctuation
    '"Which one is it',  # leading quote
    "-- how come it is red",
    "how",  # the word alone
    "who founded the company that makes this?",  # 'who' is not a QA word, but '?' ends it
    "is this made in Porto?",
    "same one but in red?",
    "same one but in red?   ",  # trailing space after the question mark
]

MODIFICATION_PHRASINGS = [
    "same one but in red",
    "make it red",
    "I want it in blue instead",
    "Whatever, make it red",  # 'Whatever' is not the word 'what'
    "whichever is cheaper, in blue",  # 'whichever' is not 'which'
    "Howdy, a triangle please",  # 'Howdy' is not 'how'
    "Somewhat bluer",
    "Wherever it was made, but teal",
    "who founded the company that makes this",  # no '?' and 'who' is not a QA word
    "the one from when it was blue",  # a QA word, but not at the start
    "in red, what do you think",  # likewise
    "same shape? no, but in red",  # a '?' that does not end the text
]


@pytest.mark.parametrize("text", QA_PHRASINGS)
def test_image_text_query_is_qa_by_the_reference_rule(text: str):
    assert is_question(text)
    assert classify_query(_query(Modality.IMAGE_TEXT, text)) is QueryType.QA


@pytest.mark.parametrize("text", MODIFICATION_PHRASINGS)
def test_image_text_query_is_modification_otherwise(text: str):
    assert not is_question(text)
    assert classify_query(_query(Modality.IMAGE_TEXT, text)) is QueryType.MODIFICATION


# ---------------------------------------------------------------------------
# per-task override


@pytest.mark.parametrize("forced", [QueryType.QA, "qa"])
def test_override_forces_qa_on_an_instruction(forced):
    query = _query(Modality.IMAGE_TEXT, "same one but in red")
    assert classify_query(query) is QueryType.MODIFICATION
    assert classify_query(query, override=forced) is QueryType.QA


@pytest.mark.parametrize("forced", [QueryType.MODIFICATION, "modification"])
def test_override_forces_modification_on_a_question(forced):
    query = _query(Modality.IMAGE_TEXT, "what would this look like in red?")
    assert classify_query(query) is QueryType.QA
    assert classify_query(query, override=forced) is QueryType.MODIFICATION


@pytest.mark.parametrize("forced", ["qa", "modification"])
def test_override_does_not_apply_to_text_or_image_queries(forced: str):
    assert classify_query(_query(Modality.TEXT, "make it red"), forced) is QueryType.TEXT
    assert classify_query(_query(Modality.IMAGE), forced) is QueryType.IMAGE


@pytest.mark.parametrize("forced", [QueryType.TEXT, "text", QueryType.IMAGE, "image"])
def test_override_to_a_non_image_text_type_is_refused(forced):
    with pytest.raises(ValueError):
        classify_query(_query(Modality.IMAGE_TEXT, "what is this?"), override=forced)


def test_override_to_an_unknown_type_is_refused():
    with pytest.raises(ValueError):
        classify_query(_query(Modality.IMAGE_TEXT, "what is this?"), override="caption")
