"""Dense ranking: embed items in batches, take each query's top k by dot product.

Embeddings are unit length, so the dot product is the cosine. Ties are broken by pool
order, so a ranking is a pure function of the embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rar_pipeline.core.retrieval.encoders.base import EncodeItem, Encoder


def embed_all(
    encoder: Encoder,
    items: Sequence[EncodeItem],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(len(items), dim) embeddings, computed `batch_size` items at a time."""
    parts = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        parts.append(encoder.embed(batch))
        if progress:
            progress(len(batch))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


@dataclass
class Embedded:
    """Vectors of items, some of which could not be embedded whole.

    Attributes:
        vectors: (n, dim); a row of zeros where an item failed.
        failed: item index -> why it has no vector (text nor image could be embedded).
        degraded: item index -> why only its text was embedded (its image failed).
    """

    vectors: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)
    degraded: dict[int, str] = field(default_factory=dict)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def embed_robustly(
    encoder: Encoder,
    items: Sequence[EncodeItem],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Embedded:
    """Like `embed_all`, but an item that cannot be embedded never fails the rest.

    A batch that raises is embedded item by item; an item whose image cannot be read
    (a corpus validated with `--image-check exists`, a file that rotted since) is embedded
    from its text alone, and one with nothing embeddable is reported, not raised.
    """
    vectors = np.zeros((len(items), encoder.dim), dtype=np.float32)
    out = Embedded(vectors)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        try:
            vectors[start : start + len(batch)] = encoder.embed(batch)
        except Exception:  # noqa: BLE001 - narrowed down item by item below
            for offset, item in enumerate(batch):
                index = start + offset
                try:
                    vectors[index] = encoder.embed([item])[0]
                except Exception as exc:  # noqa: BLE001 - recorded per item
                    if item.txt and item.image_path is not None:
                        try:
                            vectors[index] = encoder.embed([EncodeItem(item.txt)])[0]
                            out.degraded[index] = _reason(exc)
                            continue
                        except Exception as text_exc:  # noqa: BLE001
                            exc = text_exc
                    out.failed[index] = _reason(exc)
        if progress:
            progress(len(batch))
    return out


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
