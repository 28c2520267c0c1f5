"""Hard negatives mined with a retriever: the top-ranked candidates that are not positives.

A mined negative is never a labelled positive of its query (the false negatives that hurt
contrastive training most) and never a candidate only test queries point at.
"""

from __future__ import annotations

from collections.abc import Sequence

from rar_pipeline.core.retrieval.data import TrainingData
from rar_pipeline.core.retrieval.encoders.base import Encoder
from rar_pipeline.core.retrieval.validation import rank_in_pools


def mine_negatives(
    ranked: Sequence[Sequence[str]],
    positives: Sequence[frozenset[str]],
    k: int,
    exclude: frozenset[str] = frozenset(),
) -> list[list[str]]:
    """Each query's k best-ranked candidates that are neither its positives nor excluded.

    Args:
        ranked: each query's candidates, best first (deep enough: `mining_depth`).
        positives: each query's labelled positives.
        k: negatives per query.
        exclude: candidates never used as a negative (e.g. test-only ones).
    """
    return [
        [d for d in row if d not in labelled and d not in exclude][: max(k, 0)]
        for row, labelled in zip(ranked, positives, strict=True)
    ]


def mining_depth(k: int, positives: Sequence[frozenset[str]], exclude: frozenset[str]) -> int:
    """How deep to rank so that k negatives survive the filter whatever it removes."""
    return k + max((len(p) for p in positives), default=0) + len(exclude)


def mine_train_negatives(encoder: Encoder, data: TrainingData, k: int) -> dict[str, list[str]]:
    """Each train query's k hardest negatives as `encoder` ranks its pool now (by qid)."""
    positives = [frozenset(q.positives) for q in data.train]
    depth = mining_depth(k, positives, data.test_only)
    ranked = rank_in_pools(
        encoder, [q.item for q in data.train], [q.pool for q in data.train],
        data.pools, data.candidates, depth,
    )  # fmt: skip
    found = mine_negatives(ranked, positives, k, data.test_only)
    return {q.qid: m for q, m in zip(data.train, found, strict=True)}
