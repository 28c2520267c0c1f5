"""Merging: what the retriever embeds, an item's own text plus what the VLM generated.

The item's type travels with it from planning (the captions' `item_type` column, the query's
`ItemOutput.item_type`); the hallucination guard runs on the generated text before the merge.
"""

from __future__ import annotations

import pandas as pd
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.enhance.classify import CandidateType, QueryType
from rar_pipeline.core.enhance.engine import ItemOutput
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.merge import (
    CORPUS_COLUMNS,
    QUERY_COLUMNS,
    candidate_text,
    merge_corpus,
    merge_queries,
    query_text,
)

LISTING = "Listing 1001. Price $9.99, in stock."
CONTRADICTING_CAPTION = "A red circle toy, priced $4.99."
AGREEING_CAPTION = "A red circle toy, priced $9.99."
QUESTION = "what lake is near Geneva?"
CONTRADICTING_REWRITE = "what lake is near Geneva, not Como?"


def _text_cand(did: str, txt: str = "A plain description.") -> Candidate:
    return Candidate(did=did, modality=Modality.TEXT, txt=txt, img_path=None)


def _image_cand(did: str) -> Candidate:
    return Candidate(did=did, modality=Modality.IMAGE, txt=None, img_path=f"img/{did}.png")


def _both_cand(did: str, txt: str = LISTING) -> Candidate:
    return Candidate(did=did, modality=Modality.IMAGE_TEXT, txt=txt, img_path=f"img/{did}.png")


def _captions(*rows: tuple[str, str, object]) -> pd.DataFrame:
    """A corpus_captions table: (did, item_type, caption) per row, status from the caption."""
    return pd.DataFrame(
        [
            {
                "did": did,
                "item_type": item_type,
                "caption": caption,
                "status": "generated" if isinstance(caption, str) else "failed",
                "error": None if isinstance(caption, str) else "backend error",
            }
            for did, item_type, caption in rows
        ],
        columns=["did", "item_type", "caption", "status", "error"],
    )


def _query(qid: str, modality: Modality, txt: str | None, img: str | None = None) -> Query:
    return Query(
        qid=qid,
        modality=modality,
        txt=txt,
        img_path=img,
        pos_cand_list=("9:1",),
        split="test",
        task_id=6,
    )


def _out(qid: str, kind: QueryType, generated: str | None, status: str = "generated"):
    error = "backend error" if status == "failed" else None
    return ItemOutput(qid, kind, generated, status, error)


def _row(frame: pd.DataFrame, key: str, value: str) -> pd.Series:
    rows = frame[frame[key] == value]
    assert len(rows) == 1
    return rows.iloc[0]


# ---------------------------------------------------------------------------
# candidate_text and query_text


def test_a_text_only_candidate_passes_through_unchanged():
    assert candidate_text(CandidateType.TEXT, "own text", "ignored caption") == "own text"


def test_an_image_only_candidate_is_embedded_with_its_caption():
    assert candidate_text(CandidateType.IMAGE, None, "a red circle") == "a red circle"


def test_an_image_only_candidate_whose_caption_failed_has_no_text():
    assert candidate_text(CandidateType.IMAGE, None, None) is None


def test_an_image_and_text_candidate_gains_a_visual_context_line():
    assert candidate_text("image_text", "own text", "a red circle") == (
        "own text\nVisual Context: a red circle"
    )


@pytest.mark.parametrize("caption", [None, ""])
def test_an_image_and_text_candidate_without_a_caption_keeps_its_own_text(caption):
    assert candidate_text(CandidateType.IMAGE_TEXT, "own text", caption) == "own text"


def test_a_text_only_query_passes_through_unchanged():
    assert query_text(QueryType.TEXT, "find a lake", "generated") == "find a lake"


def test_an_image_only_query_is_its_caption_or_nothing():
    assert query_text(QueryType.IMAGE, None, "a lake") == "a lake"
    assert query_text("image", None, None) is None


@pytest.mark.parametrize("kind", [QueryType.QA, QueryType.MODIFICATION])
def test_qa_and_modification_queries_use_the_rewrite_and_fall_back_to_their_text(kind):
    assert query_text(kind, "own", "rewrite") == "rewrite"
    assert query_text(kind, "own", None) == "own"


def test_an_unknown_item_type_is_refused():
    with pytest.raises(ValueError):
        candidate_text("video", "own", "caption")


# ---------------------------------------------------------------------------
# merge_corpus


def test_merge_corpus_merges_every_candidate_type_into_one_row_each():
    candidates = [_text_cand("1:1"), _image_cand("1:2"), _both_cand("1:3", "Own text.")]
    captions = _captions(
        ("1:1", "text", None),
        ("1:2", "image", "a blue square"),
        ("1:3", "image_text", "a green circle"),
    )
    merged = merge_corpus(candidates, captions, GuardPolicy.KEEP)
    frame = merged.frame
    assert list(frame.columns) == CORPUS_COLUMNS
    assert list(frame["did"]) == ["1:1", "1:2", "1:3"]
    assert list(frame["modality"]) == ["text", "image", "image,text"]
    assert list(frame["enhanced_txt"]) == [
        "A plain description.",
        "a blue square",
        "Own text.\nVisual Context: a green circle",
    ]
    assert _row(frame, "did", "1:2")["img_path"] == "img/1:2.png"
    assert merged.without_enhanced_txt == 0


@pytest.mark.parametrize("failed", [None, float("nan")])
def test_a_failed_caption_falls_back_to_own_text_or_to_nothing(failed):
    # a null caption reads back from Parquet as NaN; both mean "captioning failed"
    candidates = [_image_cand("1:2"), _both_cand("1:3", "Own text.")]
    captions = _captions(("1:2", "image", failed), ("1:3", "image_text", failed))
    merged = merge_corpus(candidates, captions, GuardPolicy.KEEP)
    assert pd.isna(_row(merged.frame, "did", "1:2")["enhanced_txt"])
    assert _row(merged.frame, "did", "1:3")["enhanced_txt"] == "Own text."
    assert merged.without_enhanced_txt == 1
    assert merged.guard_flagged == 0


def test_the_caption_table_may_list_candidates_in_any_order():
    candidates = [_image_cand("1:1"), _image_cand("1:2")]
    captions = _captions(("1:2", "image", "second"), ("1:1", "image", "first"))
    merged = merge_corpus(candidates, captions, GuardPolicy.KEEP)
    assert list(merged.frame["enhanced_txt"]) == ["first", "second"]


def test_a_candidate_missing_from_the_captions_table_raises_a_key_error_naming_it():
    candidates = [_image_cand("1:1"), _image_cand("1:404")]
    captions = _captions(("1:1", "image", "a blue square"))
    with pytest.raises(KeyError, match="1:404"):
        merge_corpus(candidates, captions, GuardPolicy.KEEP)


def test_the_guard_keep_policy_keeps_a_contradicting_caption_and_flags_it():
    captions = _captions(("1:1", "image_text", CONTRADICTING_CAPTION))
    merged = merge_corpus([_both_cand("1:1")], captions, GuardPolicy.KEEP)
    row = _row(merged.frame, "did", "1:1")
    assert row["enhanced_txt"] == f"{LISTING}\nVisual Context: {CONTRADICTING_CAPTION}"
    assert row["guard_flagged"] == ["4.99"]
    assert merged.guard_flagged == 1
    assert merged.guard_dropped == 0


def test_the_guard_strip_policy_removes_the_contradicting_price_from_the_caption():
    captions = _captions(("1:1", "image_text", CONTRADICTING_CAPTION))
    merged = merge_corpus([_both_cand("1:1")], captions, GuardPolicy.STRIP)
    row = _row(merged.frame, "did", "1:1")
    own, _, context = row["enhanced_txt"].partition("\nVisual Context: ")
    assert own == LISTING
    assert "4.99" not in context
    assert "$" not in context
    assert context.startswith("A red circle toy, priced")
    assert row["guard_flagged"] == ["4.99"]
    assert merged.guard_flagged == 1
    assert merged.guard_dropped == 0


def test_the_guard_drop_policy_discards_the_caption_and_the_item_keeps_its_own_text():
    captions = _captions(("1:1", "image_text", CONTRADICTING_CAPTION))
    merged = merge_corpus([_both_cand("1:1")], captions, GuardPolicy.DROP)
    row = _row(merged.frame, "did", "1:1")
    assert row["enhanced_txt"] == LISTING
    assert row["guard_flagged"] == ["4.99"]
    assert merged.guard_flagged == 1
    assert merged.guard_dropped == 1


@pytest.mark.parametrize("policy", list(GuardPolicy))
def test_a_caption_that_agrees_with_the_own_text_is_merged_unflagged_under_any_policy(policy):
    captions = _captions(("1:1", "image_text", AGREEING_CAPTION))
    merged = merge_corpus([_both_cand("1:1")], captions, policy)
    row = _row(merged.frame, "did", "1:1")
    assert row["enhanced_txt"] == f"{LISTING}\nVisual Context: {AGREEING_CAPTION}"
    assert row["guard_flagged"] == []
    assert (merged.guard_flagged, merged.guard_dropped) == (0, 0)


def test_guard_counts_add_up_over_the_shard():
    candidates = [_both_cand("1:1"), _both_cand("1:2"), _both_cand("1:3")]
    captions = _captions(
        ("1:1", "image_text", CONTRADICTING_CAPTION),
        ("1:2", "image_text", AGREEING_CAPTION),
        ("1:3", "image_text", "Priced $1.00, sold by Acme."),
    )
    merged = merge_corpus(candidates, captions, GuardPolicy.DROP)
    assert merged.guard_flagged == 2
    assert merged.guard_dropped == 2
    assert list(merged.frame["enhanced_txt"]) == [
        LISTING,
        f"{LISTING}\nVisual Context: {AGREEING_CAPTION}",
        LISTING,
    ]


def test_merge_corpus_counts_items_by_their_planned_type():
    candidates = [_text_cand("1:1"), _image_cand("1:2"), _image_cand("1:3"), _both_cand("1:4")]
    captions = _captions(
        ("1:1", "text", None),
        ("1:2", "image", "a"),
        ("1:3", "image", "b"),
        ("1:4", "image_text", "c"),
    )
    merged = merge_corpus(candidates, captions, GuardPolicy.KEEP)
    assert merged.items_by_type == {"text": 1, "image": 2, "image_text": 1}


def test_merge_corpus_uses_the_planned_type_rather_than_classifying_again():
    # an image+text candidate planned as text-only passes through without its caption
    captions = _captions(("1:1", "text", "a caption that must not appear"))
    merged = merge_corpus([_both_cand("1:1", "Own text.")], captions, GuardPolicy.KEEP)
    assert _row(merged.frame, "did", "1:1")["item_type"] == "text"
    assert _row(merged.frame, "did", "1:1")["enhanced_txt"] == "Own text."


def test_merge_corpus_samples_only_enhanced_items_up_to_the_limit():
    candidates = [_text_cand("1:0")] + [_image_cand(f"1:{i}") for i in range(1, 5)]
    captions = _captions(
        ("1:0", "text", None), *[(f"1:{i}", "image", f"caption {i}") for i in range(1, 5)]
    )
    merged = merge_corpus(candidates, captions, GuardPolicy.KEEP, n_samples=2)
    assert merged.samples == [
        ("1:1", "img/1:1.png", "caption 1"),
        ("1:2", "img/1:2.png", "caption 2"),
    ]


def test_a_sample_of_an_image_and_text_candidate_shows_its_text_before_and_after():
    captions = _captions(("1:1", "image_text", "a green circle"))
    merged = merge_corpus([_both_cand("1:1", "Own text.")], captions, GuardPolicy.KEEP)
    assert merged.samples == [("1:1", "Own text.", "Own text.\nVisual Context: a green circle")]


def test_merging_no_candidates_gives_an_empty_frame_with_the_corpus_columns():
    merged = merge_corpus([], _captions(), GuardPolicy.KEEP)
    assert list(merged.frame.columns) == CORPUS_COLUMNS
    assert len(merged.frame) == 0
    assert merged.without_enhanced_txt == 0
    assert merged.samples == []


# ---------------------------------------------------------------------------
# merge_queries


def test_merge_queries_merges_every_query_type_with_its_output():
    queries = [
        _query("6:1", Modality.TEXT, "find a lake"),
        _query("6:2", Modality.IMAGE, None, "img/q2.png"),
        _query("6:3", Modality.IMAGE_TEXT, QUESTION, "img/q3.png"),
        _query("6:4", Modality.IMAGE_TEXT, "same one but in red", "img/q4.png"),
    ]
    outputs = {
        "test/6:1": _out("6:1", QueryType.TEXT, None, "passthrough"),
        "test/6:2": _out("6:2", QueryType.IMAGE, "a lake at dusk"),
        "test/6:3": _out("6:3", QueryType.QA, "what lake is near Geneva in this photo?"),
        "test/6:4": _out("6:4", QueryType.MODIFICATION, "colour: red"),
    }
    merged = merge_queries(queries, outputs, GuardPolicy.KEEP)
    frame = merged.frame
    assert list(frame.columns) == QUERY_COLUMNS
    assert list(frame["query_type"]) == ["text", "image", "qa", "modification"]
    assert list(frame["enhanced_txt"]) == [
        "find a lake",
        "a lake at dusk",
        "what lake is near Geneva in this photo?",
        "colour: red",
    ]
    assert list(frame["status"]) == ["passthrough", "generated", "generated", "generated"]
    first = _row(frame, "qid", "6:1")
    assert first["pos_cand_list"] == ["9:1"]
    assert (first["split"], first["task_id"], first["modality"]) == ("test", 6, "text")
    assert merged.items_by_type == {"text": 1, "image": 1, "qa": 1, "modification": 1}


def test_a_failed_rewrite_falls_back_to_the_question_and_keeps_the_error():
    queries = [_query("6:3", Modality.IMAGE_TEXT, QUESTION, "img/q3.png")]
    outputs = {"test/6:3": _out("6:3", QueryType.QA, None, "failed")}
    row = _row(merge_queries(queries, outputs, GuardPolicy.KEEP).frame, "qid", "6:3")
    assert row["enhanced_txt"] == QUESTION
    assert row["status"] == "failed"
    assert row["error"] == "backend error"


def test_the_query_type_comes_from_the_output_not_from_the_query_text():
    # a task override planned this question as a modification: no QA guard, no QA routing
    queries = [_query("6:3", Modality.IMAGE_TEXT, QUESTION, "img/q3.png")]
    outputs = {"test/6:3": _out("6:3", QueryType.MODIFICATION, CONTRADICTING_REWRITE)}
    merged = merge_queries(queries, outputs, GuardPolicy.DROP)
    row = _row(merged.frame, "qid", "6:3")
    assert row["query_type"] == "modification"
    assert row["enhanced_txt"] == CONTRADICTING_REWRITE
    assert row["guard_flagged"] == []
    assert merged.guard_dropped == 0


@pytest.mark.parametrize(
    ("policy", "expected_dropped"),
    [(GuardPolicy.KEEP, 0), (GuardPolicy.STRIP, 0), (GuardPolicy.DROP, 1)],
)
def test_the_guard_checks_qa_rewrites_against_the_question(policy, expected_dropped):
    queries = [_query("6:3", Modality.IMAGE_TEXT, QUESTION, "img/q3.png")]
    outputs = {"test/6:3": _out("6:3", QueryType.QA, CONTRADICTING_REWRITE)}
    merged = merge_queries(queries, outputs, policy)
    row = _row(merged.frame, "qid", "6:3")
    assert row["guard_flagged"] == ["como"]
    assert merged.guard_flagged == 1
    assert merged.guard_dropped == expected_dropped
    text = row["enhanced_txt"]
    if policy is GuardPolicy.KEEP:
        assert text == CONTRADICTING_REWRITE
    elif policy is GuardPolicy.STRIP:
        assert "como" not in text.lower()
        assert "Geneva" in text
    else:
        assert text == QUESTION


def test_the_guard_leaves_image_captions_and_modifications_alone():
    # neither has own text the guard could compare with in the way QA rewrites do
    queries = [
        _query("6:2", Modality.IMAGE, None, "img/q2.png"),
        _query("6:4", Modality.IMAGE_TEXT, "Same as Geneva one but $9.99", "img/q4.png"),
    ]
    outputs = {
        "test/6:2": _out("6:2", QueryType.IMAGE, "Lake Como, priced $4.99"),
        "test/6:4": _out("6:4", QueryType.MODIFICATION, "Lake Como style, price $4.99"),
    }
    merged = merge_queries(queries, outputs, GuardPolicy.DROP)
    assert list(merged.frame["enhanced_txt"]) == [
        "Lake Como, priced $4.99",
        "Lake Como style, price $4.99",
    ]
    assert list(merged.frame["guard_flagged"]) == [[], []]
    assert (merged.guard_flagged, merged.guard_dropped) == (0, 0)


def test_a_query_without_an_output_raises_a_key_error_naming_it():
    queries = [_query("6:9", Modality.TEXT, "find a lake")]
    with pytest.raises(KeyError, match="6:9"):
        merge_queries(queries, {}, GuardPolicy.KEEP)


def test_merge_queries_samples_enhanced_queries_only():
    queries = [
        _query("6:1", Modality.TEXT, "find a lake"),
        _query("6:2", Modality.IMAGE, None, "img/q2.png"),
        _query("6:3", Modality.IMAGE_TEXT, QUESTION, "img/q3.png"),
    ]
    outputs = {
        "test/6:1": _out("6:1", QueryType.TEXT, None, "passthrough"),
        "test/6:2": _out("6:2", QueryType.IMAGE, "a lake at dusk"),
        "test/6:3": _out("6:3", QueryType.QA, "what lake is near Geneva here?"),
    }
    merged = merge_queries(queries, outputs, GuardPolicy.KEEP, n_samples=5)
    assert merged.samples == [
        ("6:2", "img/q2.png", "a lake at dusk"),
        ("6:3", QUESTION, "what lake is near Geneva here?"),
    ]
    assert merge_queries(queries, outputs, GuardPolicy.KEEP, n_samples=1).samples == [
        ("6:2", "img/q2.png", "a lake at dusk")
    ]


def test_merging_no_queries_gives_an_empty_frame_with_the_query_columns():
    merged = merge_queries([], {}, GuardPolicy.KEEP)
    assert list(merged.frame.columns) == QUERY_COLUMNS
    assert len(merged.frame) == 0
    assert merged.without_enhanced_txt == 0


def test_an_image_query_whose_caption_failed_counts_as_without_enhanced_text():
    queries = [_query("6:2", Modality.IMAGE, None, "img/q2.png")]
    outputs = {"test/6:2": _out("6:2", QueryType.IMAGE, None, "failed")}
    merged = merge_queries(queries, outputs, GuardPolicy.KEEP)
    assert pd.isna(_row(merged.frame, "qid", "6:2")["enhanced_txt"])
    assert merged.without_enhanced_txt == 1
