"""Training pairs per ablation config: the right texts per side, and no test label inside."""

from __future__ import annotations

import pandas as pd
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.retrieval.pairs import (
    CONFIGS,
    PAIR_COLUMNS,
    build_pairs,
    pair_leaks,
    represent_candidates,
)

CANDIDATES = {
    "c1": Candidate("c1", Modality.IMAGE, None, "img/1.png"),
    "c2": Candidate("c2", Modality.IMAGE_TEXT, "Listing 2.", "img/2.png"),
    "c3": Candidate("c3", Modality.TEXT, "A passage.", None),
    "t1": Candidate("t1", Modality.TEXT, "Only a test answer.", None),
}
ENHANCED_CORPUS = {
    "c1": "A red circle.",
    "c2": "Listing 2.\nVisual Context: A blue square.",
    "c3": "A passage.",
    "t1": "Only a test answer.",
}


def _query(qid, split, pos, neg=(), txt="who makes this?", img="img/q.png"):
    modality = Modality.IMAGE_TEXT if img else Modality.TEXT
    return Query(qid, modality, txt, img, tuple(pos), tuple(neg), split=split, task_id=6)


QUERIES = [
    _query("q1", "train", ["c1", "c2"], neg=["c1", "c3", "t1", "nowhere"]),
    _query("q2", "train", ["c3"]),
    _query("q3", "test", ["t1", "c3"], txt="a test question?"),
]
ENHANCED_QUERIES = {
    "train/q1": "who makes this red circle?",
    "train/q2": "who makes this passage?",
    "test/q3": "a test question about t1?",
}


def _pairs(name: str, queries=QUERIES, **kwargs):
    return build_pairs(
        CONFIGS[name], queries, CANDIDATES, ENHANCED_QUERIES, ENHANCED_CORPUS, **kwargs
    ).frame


@pytest.mark.parametrize(
    ("name", "query_txt", "cand_txt"),
    [
        ("none", "who makes this?", None),
        ("corpus", "who makes this?", "A red circle."),
        ("query", "who makes this red circle?", None),
        ("full", "who makes this red circle?", "A red circle."),
    ],
)
def test_each_config_uses_its_own_representation_of_each_side(name, query_txt, cand_txt):
    frame = _pairs(name, val_fraction=0.0)
    assert list(frame.columns) == PAIR_COLUMNS
    row = frame[(frame.qid == "q1") & (frame.did == "c1")].iloc[0]
    assert row.query_txt == query_txt
    assert row.cand_txt == cand_txt or (cand_txt is None and pd.isna(row.cand_txt))
    assert row.query_img_path == "img/q.png" and row.cand_img_path == "img/1.png"  # images stay


def test_one_row_per_query_and_positive_of_the_train_split():
    frame = _pairs("none", val_fraction=0.0)
    assert sorted(zip(frame.qid, frame.did, strict=True)) == [
        ("q1", "c1"),
        ("q1", "c2"),
        ("q2", "c3"),
    ]


def test_no_test_query_and_no_test_only_candidate_reaches_any_pair():
    for name in CONFIGS:
        frame = _pairs(name, val_fraction=0.5)
        assert "q3" not in set(frame.qid)
        assert "t1" not in set(frame.did)
        assert all("t1" not in negs for negs in frame.neg_dids)
        assert not any("test question" in str(t) for t in frame.query_txt)


def test_hard_negatives_are_never_a_positive_of_the_query_nor_unknown():
    frame = _pairs("none", val_fraction=0.0)
    negatives = frame[frame.qid == "q1"].neg_dids.iloc[0]
    assert list(negatives) == ["c3"]  # c1 is q1's positive, t1 test-only, "nowhere" unknown


def test_the_corpus_val_split_is_the_validation_set_when_there_is_one():
    with_val = [*QUERIES, _query("q4", "val", ["c2"])]
    frame = _pairs("none", queries=with_val)
    assert set(frame[frame.split == "val"].qid) == {"q4"}
    assert set(frame[frame.split == "train"].qid) == {"q1", "q2"}


def test_without_a_val_split_a_seeded_slice_of_train_queries_is_held_out_whole():
    many = [_query(f"q{i}", "train", ["c3"]) for i in range(200)]
    first = _pairs("none", queries=many, val_fraction=0.2, seed=1)
    again = _pairs("none", queries=many, val_fraction=0.2, seed=1)
    other = _pairs("none", queries=many, val_fraction=0.2, seed=2)
    held = set(first[first.split == "val"].qid)
    assert held == set(again[again.split == "val"].qid) != set(other[other.split == "val"].qid)
    assert 20 <= len(held) <= 60
    assert not held & set(first[first.split == "train"].qid)  # a query is never on both sides


def test_an_enhanced_side_without_its_texts_is_refused():
    with pytest.raises(ValueError, match="enhanced corpus"):
        build_pairs(CONFIGS["corpus"], QUERIES, CANDIDATES, ENHANCED_QUERIES, None)
    with pytest.raises(ValueError, match="enhanced queries"):
        build_pairs(CONFIGS["query"], QUERIES, CANDIDATES, None, ENHANCED_CORPUS)


def _candidates_table(name: str) -> pd.DataFrame:
    pools = {"pool": list(CANDIDATES.values())}
    return represent_candidates(CONFIGS[name], pools, QUERIES, ENHANCED_CORPUS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_leak_audit_finds_nothing_in_pairs_built_as_they_are(name):
    frame = _pairs(name, val_fraction=0.5)
    assert not any(pair_leaks(frame, _candidates_table(name), QUERIES).values())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_leak_audit_finds_each_kind_of_leak(name):
    clean, table = _pairs(name), _candidates_table(name)
    row = clean.iloc[0].to_dict()
    test_query = {**row, "qid": "q3", "split": "train", "query_txt": "a test question?"}
    test_as_test = {**row, "qid": "qx", "split": "test"}
    test_positive = {**row, "did": "t1"}
    test_negative = {**row, "neg_dids": ["t1"]}
    leaked = pd.concat(
        [clean, pd.DataFrame([test_query, test_as_test, test_positive, test_negative])],
        ignore_index=True,
    )
    leaks = pair_leaks(leaked, table, QUERIES)
    assert leaks["test_split_pairs"] == ["qx"]
    assert "q3" in leaks["test_query_content"]
    assert leaks["test_only_positives"] == ["t1"] and leaks["test_only_negatives"] == ["t1"]


def test_a_qid_or_image_reused_across_splits_with_other_words_is_no_leak():
    # M-BEIR reuses qids across splits, and images across queries
    queries = [*QUERIES, _query("q1", "test", ["c3"], txt="another question?")]
    frame = _pairs("none", queries=queries)
    assert not any(pair_leaks(frame, _candidates_table("none"), queries).values())
