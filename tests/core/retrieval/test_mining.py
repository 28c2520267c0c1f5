"""Mined negatives and dense ranking."""

from __future__ import annotations

import numpy as np

from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.retrieval.mining import mine_negatives, mining_depth
from rar_pipeline.core.retrieval.validation import hit_rate, rank_in_pools, top_k

IDS = ["a", "b", "c", "d", "e"]
CANDS = np.eye(5, dtype=np.float32)


def test_mined_negatives_are_the_best_ranked_non_positives():
    assert mine_negatives([IDS], [frozenset({"a"})], k=2) == [["b", "c"]]


def test_a_labelled_positive_or_an_excluded_candidate_is_never_a_negative():
    mined = mine_negatives([IDS], [frozenset({"a", "b"})], k=3, exclude=frozenset({"c"}))
    assert mined == [["d", "e"]]  # fewer than k survive: no positive fills the gap


def test_mining_nothing():
    assert mine_negatives([IDS], [frozenset()], k=0) == [[]]


def test_mining_ranks_deep_enough_for_k_to_survive_the_filter():
    positives = [frozenset({"a"}), frozenset({"a", "b", "c"})]
    depth = mining_depth(2, positives, exclude=frozenset({"d"}))
    assert depth == 2 + 3 + 1
    assert mine_negatives([IDS[:depth]] * 2, positives, 2, frozenset({"d"})) == [["b", "c"], ["e"]]


class OneHot:
    """An encoder double: the item's text names the axis it points along."""

    name, dim = "one-hot", 5

    def embed(self, items):
        return np.stack([CANDS[IDS.index(i.txt)] for i in items])


def test_each_query_ranks_against_its_own_pool_only():
    items = {d: EncodeItem(d) for d in IDS}
    pools = {"left": ["a", "b"], "right": ["c", "d", "e"]}
    queries = [EncodeItem("b"), EncodeItem("b"), EncodeItem("e")]
    ranked = rank_in_pools(OneHot(), queries, ["left", "right", None], pools, items, k=2)
    assert ranked == [["b", "a"], ["c", "d"], []]  # in `right`, "b" matches nothing: pool order


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
