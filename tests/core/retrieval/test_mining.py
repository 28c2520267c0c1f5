"""Mined negatives and dense ranking."""

from __future__ import annotations

import numpy as np

from rar_pipeline.core.retrieval.mining import mine_negatives
from rar_pipeline.core.retrieval.rank import hit_rate, top_k

IDS = ["a", "b", "c", "d", "e"]
CANDS = np.eye(5, dtype=np.float32)


def test_mined_negatives_are_the_best_ranked_non_positives():
    query = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]], dtype=np.float32)
    assert mine_negatives(query, CANDS, IDS, [frozenset({"a"})], k=2) == [["b", "c"]]


def test_a_labelled_positive_or_an_excluded_candidate_is_never_a_negative():
    query = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], dtype=np.float32)
    mined = mine_negatives(
        query, CANDS, IDS, [frozenset({"a", "b"})], k=3, exclude=frozenset({"c"})
    )
    assert mined == [["d", "e"]]  # fewer than k survive: no positive fills the gap


def test_mining_nothing():
    query = np.ones((1, 5), dtype=np.float32)
    assert mine_negatives(query, CANDS, IDS, [frozenset()], k=0) == [[]]


def test_top_k_is_best_first_and_ties_keep_pool_order():
    query = np.array([[0.5, 1.0, 0.5, 0.0, 0.5]], dtype=np.float32)
    order, scores = top_k(query, CANDS, 4)
    assert [IDS[j] for j in order[0]] == ["b", "a", "c", "e"]
    assert list(scores[0]) == [1.0, 0.5, 0.5, 0.5]


def test_hit_rate_counts_queries_with_any_positive_in_the_top_k():
    ranked = [["a", "b"], ["c", "d"], ["e", "a"]]
    positives = [frozenset({"b"}), frozenset({"x"}), frozenset({"e", "a"})]
    assert hit_rate(ranked, positives, 1) == 1 / 3
    assert hit_rate(ranked, positives, 2) == 2 / 3
