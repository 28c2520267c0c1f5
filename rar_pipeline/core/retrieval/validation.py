"""How a retriever is validated while it trains: each query ranked against its own pool.

Embeddings are unit length, so the dot product is the cosine. Ties are broken by pool
order, so a ranking is a pure function of the embeddings. Recall@k is UniIR's (any positive
in the top k); mining ranks train queries the same way (`mining.mine_train_negatives`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rar_pipeline.core.retrieval.data import TrainingData
from rar_pipeline.core.retrieval.embedding import embed_all
from rar_pipeline.core.retrieval.encoders.base import EncodeItem, Encoder


def top_k(queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best candidates: (indices, scores), both (n, min(k, c)), best first."""
    scores = queries @ candidates.T  # (n, c)
    k = min(k, scores.shape[1])
    # stable sort on -score: equal scores keep pool order
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def hit_rate(ranked: Sequence[Sequence[str]], positives: Sequence[frozenset[str]], k: int) -> float:
    """UniIR's Recall@k: the share of queries with any positive in their top k."""
    if not ranked:
        return 0.0
    hits = sum(bool(set(r[:k]) & p) for r, p in zip(ranked, positives, strict=True))
    return hits / len(ranked)


def rank_in_pools(
    encoder: Encoder,
    queries: Sequence[EncodeItem],
    homes: Sequence[str | None],
    pools: Mapping[str, Sequence[str]],
    candidates: Mapping[str, EncodeItem],
    k: int,
    batch_size: int = 256,
) -> list[list[str]]:
    """Each query's top-k dids, ranked against its own pool (`homes[i]`; None: ranks nothing).

    Each pool's candidates are embedded once, whatever the number of queries it serves.
    """
    ranked: list[list[str]] = [[] for _ in queries]
    for pool in sorted({h for h in homes if h}):
        rows = [i for i, h in enumerate(homes) if h == pool]
        dids = list(pools[pool])
        pool_vecs = embed_all(encoder, [candidates[d] for d in dids], batch_size)
        query_vecs = embed_all(encoder, [queries[i] for i in rows], batch_size)
        order, _ = top_k(query_vecs, pool_vecs, k)
        for i, row in zip(rows, order, strict=True):
            ranked[i] = [dids[j] for j in row]
    return ranked


def validation_recall(encoder: Encoder, data: TrainingData, k: int, batch_size: int = 256) -> float:
    """Recall@k of the validation queries, each ranked against its own pool."""
    if not data.val:
        return float("nan")
    ranked = rank_in_pools(
        encoder, [q.item for q in data.val], [q.pool for q in data.val],
        data.pools, data.candidates, k, batch_size,
    )  # fmt: skip
    return hit_rate(ranked, [q.positives for q in data.val], k)
