"""Hard negatives mined with a retriever: the top-ranked candidates that are not positives.

A mined negative is never a labelled positive of its query (the false negatives that hurt
contrastive training most) and never a candidate only test queries point at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rar_pipeline.core.retrieval.rank import top_k


def mine_negatives(
    queries: np.ndarray,
    candidates: np.ndarray,
    candidate_ids: Sequence[str],
    positives: Sequence[frozenset[str]],
    k: int,
    exclude: frozenset[str] = frozenset(),
) -> list[list[str]]:
    """Each query's k best-ranked candidates that are neither its positives nor excluded.

    Args:
        queries: (n, d) query embeddings.
        candidates: (c, d) candidate embeddings of the pool they rank against.
        candidate_ids: the did of each candidate row.
        positives: each query's labelled positives.
        k: negatives per query.
        exclude: candidates never used as a negative (e.g. test-only ones).
    """
    if k <= 0 or len(candidate_ids) == 0:
        return [[] for _ in positives]
    # look deep enough that k survive the filter
    depth = min(len(candidate_ids), k + max((len(p) for p in positives), default=0) + len(exclude))
    order, _ = top_k(queries, candidates, depth)
    mined = []
    for row, labelled in zip(order, positives, strict=True):
        ids = [candidate_ids[j] for j in row]
        mined.append([d for d in ids if d not in labelled and d not in exclude][:k])
    return mined
