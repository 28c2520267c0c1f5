import numpy as np
import pytest

from rar_pipeline.core.evaluation.metrics import per_query, randomization_test

QRELS = {
    "one_positive": {"a": 1},
    "two_positives": {"b": 1, "c": 1},
    "never_ranked": {"z": 1},
}
RUN = {
    "one_positive": {"x": 0.9, "a": 0.8},  # positive at rank 2
    "two_positives": {"b": 0.9, "y": 0.8, "c": 0.1},  # ranks 1 and 3
    "not_in_qrels": {"a": 1.0},
}


def test_uniir_recall_is_a_hit_if_any_positive_is_in_the_top_k():
    figures = per_query(QRELS, RUN)
    assert figures.loc["one_positive", "recall_at_1"] == 0.0
    assert figures.loc["one_positive", "recall_at_5"] == 1.0
    assert figures.loc["two_positives", "recall_at_1"] == 1.0


def test_trec_recall_is_the_share_of_positives_found():
    figures = per_query(QRELS, RUN)
    assert figures.loc["two_positives", "trec_recall_at_1"] == 0.5
    assert figures.loc["two_positives", "trec_recall_at_5"] == 1.0
    assert figures.loc["one_positive", "trec_recall_at_5"] == 1.0


def test_every_qrels_query_counts_and_only_those():
    figures = per_query(QRELS, RUN)
    assert sorted(figures.index) == sorted(QRELS)
    assert (figures.loc["never_ranked"] == 0.0).all()
    assert figures["recall_at_10"].mean() == pytest.approx(2 / 3)


def test_the_order_is_the_scores_not_the_dict_order():
    figures = per_query({"q": {"a": 1}}, {"q": {"a": 0.1, "b": 0.9}})
    assert figures.loc["q", "recall_at_1"] == 0.0


class TestRandomizationTest:
    def test_identical_systems_give_one(self):
        a = np.array([1, 0, 1, 1, 0], dtype=float)
        assert randomization_test(a, a.copy()) == 1.0

    def test_a_consistent_difference_is_significant(self):
        rng = np.random.default_rng(0)
        a = np.ones(60)
        b = (rng.random(60) < 0.4).astype(float)
        assert randomization_test(a, b) < 0.001

    def test_a_single_flip_is_not(self):
        a = np.zeros(50)
        b = a.copy()
        b[0] = 1
        assert randomization_test(a, b) == pytest.approx(1.0)

    def test_it_is_two_sided_and_seeded(self):
        rng = np.random.default_rng(1)
        a, b = rng.random(40), rng.random(40)
        assert randomization_test(a, b) == pytest.approx(randomization_test(b, a))
        assert randomization_test(a, b, seed=3) == randomization_test(a, b, seed=3)

    def test_unpaired_samples_are_refused(self):
        with pytest.raises(ValueError, match="paired"):
            randomization_test(np.ones(3), np.ones(4))
