"""Training pairs per ablation config: the right texts per side, and no test label inside."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.retrieval import pairs as pairs_module
from rar_pipeline.core.retrieval.pairs import (
    CONFIGS,
    LEAK_KINDS,
    LEFT_OUT_COLUMNS,
    PAIR_COLUMNS,
    build_pairs,
    no_train_pairs_reason,
    pair_leaks,
    read_left_out,
    represent_candidates,
    write_left_out,
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
    from_test_query = {**row, "qid": "q3", "query_key": "test/q3"}  # a test query's pair
    test_as_test = {**row, "qid": "qx", "split": "test"}
    untraced = {**row, "qid": "qy", "query_key": "train/qy"}  # a query nobody ingested
    test_positive = {**row, "did": "t1"}
    test_negative = {**row, "neg_dids": ["t1"]}
    leaked = pd.concat(
        [
            clean,
            pd.DataFrame([from_test_query, test_as_test, untraced, test_positive, test_negative]),
        ],  # fmt: skip
        ignore_index=True,
    )
    leaks = pair_leaks(leaked, table, QUERIES)
    assert leaks["test_split_pairs"] == ["q3", "qx"]
    assert leaks["untraced_pairs"] == ["train/qy"]
    assert leaks["test_only_positives"] == ["t1"] and leaks["test_only_negatives"] == ["t1"]
    assert set(leaks) == set(LEAK_KINDS)


def test_a_qid_or_image_reused_across_splits_with_other_words_is_no_leak():
    # M-BEIR reuses qids across splits, and images across queries
    queries = [*QUERIES, _query("q1", "test", ["c3"], txt="another question?")]
    frame = _pairs("none", queries=queries)
    assert not any(pair_leaks(frame, _candidates_table("none"), queries).values())


# -- a train query that says what a test query says (real corpora repeat short queries)

TEST_WORDS = {"txt": "a test question?", "img": "img/q.png"}  # what q3 says


def _repeat(qid: str, pos, neg=(), split: str = "train"):
    return _query(qid, split, pos, neg=neg, **TEST_WORDS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_repeat_of_a_test_query_with_other_positives_trains_and_is_no_leak(name):
    queries = [*QUERIES, _repeat("q5", ["c1", "c2"], neg=["c3"])]  # q3's positives: t1, c3
    pairs = build_pairs(CONFIGS[name], queries, CANDIDATES, ENHANCED_QUERIES, ENHANCED_CORPUS,
                        val_fraction=0.0)  # fmt: skip
    repeat = pairs.frame[pairs.frame.qid == "q5"]
    assert sorted(repeat.did) == ["c1", "c2"]
    assert list(repeat.neg_dids.iloc[0]) == []  # c3 is q3's positive: a test label
    assert pairs.counts["queries_repeating_a_test_query"] == 1
    assert pairs.counts["pairs_left_out"] == 0
    assert pairs.counts["negatives_revealing_a_test_label"] == 1
    table = represent_candidates(CONFIGS[name], {"pool": list(CANDIDATES.values())}, queries,
                                 ENHANCED_CORPUS)  # fmt: skip
    assert not any(pair_leaks(pairs.frame, table, queries).values())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_builder_leaves_out_exactly_the_pairs_and_negatives_that_reveal_a_test_label(name):
    # q5 says what test query q3 says: its pair with c3 (q3's positive) would be q3's
    # label, and so would t1 as its hard negative; its pair with c1 reveals nothing
    queries = [*QUERIES, _repeat("q5", ["c3", "c1"], neg=["t1", "c2"])]
    pairs = build_pairs(CONFIGS[name], queries, CANDIDATES, ENHANCED_QUERIES, ENHANCED_CORPUS,
                        val_fraction=0.0)  # fmt: skip
    assert list(pairs.left_out.columns) == LEFT_OUT_COLUMNS
    gone = pairs.left_out.sort_values("did")
    assert list(zip(gone.qid, gone.query_key, gone.did, gone.role, gone.test_qid,
                    strict=True)) == [("q5", "train/q5", "c3", "positive", "q3"),
                                      ("q5", "train/q5", "t1", "hard negative", "q3")]  # fmt: skip
    assert all("test query q3" in reason for reason in gone.reason)
    repeat = pairs.frame[pairs.frame.qid == "q5"]
    assert list(repeat.did) == ["c1"] and list(repeat.neg_dids.iloc[0]) == ["c2"]
    assert sorted(zip(pairs.frame.qid, pairs.frame.did, strict=True)) == [
        ("q1", "c1"), ("q1", "c2"), ("q2", "c3"), ("q5", "c1")]  # fmt: skip
    assert pairs.counts["pairs_left_out"] == 1
    assert pairs.counts["negatives_revealing_a_test_label"] == 1
    table = represent_candidates(CONFIGS[name], {"pool": list(CANDIDATES.values())}, queries,
                                 ENHANCED_CORPUS)  # fmt: skip
    assert not any(pair_leaks(pairs.frame, table, queries).values())


@pytest.mark.parametrize("task_id", [None, 1])
def test_a_repeat_filed_under_another_task_or_none_reveals_the_label_all_the_same(task_id):
    # the retriever never sees a task id: the same words and image are the same input
    repeat = dataclasses.replace(_repeat("q5", ["c3", "c1"]), task_id=task_id)
    pairs = build_pairs(CONFIGS["none"], [*QUERIES, repeat], CANDIDATES, val_fraction=0.0)
    assert list(pairs.frame[pairs.frame.qid == "q5"].did) == ["c1"]
    assert list(pairs.left_out.did) == ["c3"]
    slipped = {**_revealing_row("none", pairs.frame), "task_id": task_id}
    frame = pd.concat([pairs.frame, pd.DataFrame([slipped])], ignore_index=True)
    leaks = pair_leaks(frame, _candidates_table("none"), [*QUERIES, repeat])
    assert leaks["test_label_positives"] == ["train/q5 c3"] and not leaks["untraced_pairs"]


def test_a_val_query_repeating_a_test_query_is_held_to_the_same_rule():
    queries = [*QUERIES, _repeat("q5", ["c3", "c2"], split="val")]
    pairs = build_pairs(CONFIGS["none"], queries, CANDIDATES)
    assert list(pairs.frame[pairs.frame.qid == "q5"].did) == ["c2"]
    assert list(pairs.left_out.query_key) == ["val/q5"]


def test_a_held_out_train_query_names_its_source_by_its_own_split():
    many = [_query(f"q{i}", "train", ["c3"]) for i in range(30)]
    frame = _pairs("none", queries=many, val_fraction=0.5, seed=1)
    held = frame[frame.split == "val"]
    assert len(held)
    assert list(held.query_key) == [f"train/{qid}" for qid in held.qid]


def test_a_candidate_only_label_revealing_train_rows_point_at_stays_test_only():
    # q5 repeats q3 with t1: that is q3's label, not a train one, so t1 is still test-only
    queries = [*QUERIES, _repeat("q5", ["t1", "c1"]), _query("q6", "train", ["c2"], neg=["t1"])]
    pairs = build_pairs(CONFIGS["none"], queries, CANDIDATES, val_fraction=0.0)
    assert pairs_module.test_only_candidates(queries) == {"t1"}
    assert list(pairs.frame[pairs.frame.qid == "q6"].neg_dids.iloc[0]) == []
    table = represent_candidates(CONFIGS["none"], {"pool": list(CANDIDATES.values())}, queries)
    assert set(table[table.test_only].did) == {"t1"}


def test_a_train_split_that_copies_the_test_split_trains_on_nothing_and_says_why():
    tests = [_query("q3", "test", ["t1", "c3"], txt="a test question?"),
             _query("q4", "test", ["c2"], txt="another?", img=None)]  # fmt: skip
    copies = [dataclasses.replace(q, split="train") for q in tests]
    pairs = build_pairs(CONFIGS["none"], [*tests, *copies], CANDIDATES, val_fraction=0.0)
    assert pairs.frame.empty and pairs.counts["pairs_train"] == 0
    assert sorted(zip(pairs.left_out.query_key, pairs.left_out.did, strict=True)) == [
        ("train/q3", "c3"), ("train/q3", "t1"), ("train/q4", "c2")]  # fmt: skip
    reason = no_train_pairs_reason(pairs.left_out, "left_out.jsonl")
    assert reason.startswith("no train pairs: 3 left out") and "reveal a test label" in reason
    assert "left_out.jsonl" in reason and "zero-shot" in reason
    nothing = no_train_pairs_reason(pairs.left_out.iloc[:0], "left_out.jsonl")
    assert nothing == "no train pairs: the corpus has no train split with resolvable positives"


def _revealing_row(name: str, frame: pd.DataFrame) -> dict:
    """A pair from train query q5 (q3's words) with q3's positive c3, as a config shows it."""
    row = frame[frame.qid == "q1"].iloc[0].to_dict()
    text = "who makes this red circle?" if CONFIGS[name].enhanced_queries else TEST_WORDS["txt"]
    return {**row, "qid": "q5", "query_key": "train/q5", "query_txt": text, "did": "c3",
            "query_img_path": "img/q.png", "neg_dids": ["c2"]}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_audit_finds_a_test_label_the_builder_let_through_whatever_the_pair_says(name):
    # the audit reads q5's own words from the queries, not the pair's text (a rewrite, for
    # configs that enhance queries), and decides without the builder's left-out list
    queries = [*QUERIES, _repeat("q5", ["c3", "c1"], neg=["t1"])]
    built = build_pairs(CONFIGS[name], queries, CANDIDATES, ENHANCED_QUERIES, ENHANCED_CORPUS,
                        val_fraction=0.0)  # fmt: skip
    slipped = {**_revealing_row(name, built.frame), "neg_dids": ["t1", "c2"]}
    frame = pd.concat([built.frame, pd.DataFrame([slipped])], ignore_index=True)
    table = represent_candidates(CONFIGS[name], {"pool": list(CANDIDATES.values())}, queries,
                                 ENHANCED_CORPUS)  # fmt: skip
    leaks = pair_leaks(frame, table, queries)
    assert leaks["test_label_positives"] == ["train/q5 c3"]
    assert leaks["test_label_negatives"] == ["train/q5 t1"]
    assert not leaks["test_split_pairs"] and not leaks["untraced_pairs"]
    # the same pair from q1 (other words) reveals nothing
    other = {**slipped, "qid": "q1", "query_key": "train/q1", "neg_dids": []}
    clean = pd.concat([built.frame, pd.DataFrame([other])], ignore_index=True)
    assert not any(pair_leaks(clean, table, queries).values())


def test_the_left_out_list_round_trips_through_its_file(tmp_path):
    queries = [*QUERIES, _repeat("q5", ["c3", "c1"], neg=["t1"])]
    left_out = build_pairs(CONFIGS["none"], queries, CANDIDATES).left_out
    path = write_left_out(left_out, tmp_path / "none.left_out.jsonl")
    assert len(path.read_text().splitlines()) == 2
    assert read_left_out(path).to_dict("records") == left_out.to_dict("records")
    empty = write_left_out(left_out.iloc[:0], tmp_path / "empty.jsonl")
    assert empty.read_text() == "" and read_left_out(empty).empty
    assert read_left_out(tmp_path / "never_written.jsonl").empty
