"""The one search path over a config's table: `SearchStore`, `TableSearch`, `dense_search`.

`SearchStore` is what search and evaluation need from a vector store (`defs.resources.lancedb`
has the LanceDB one; tests have an in-memory fake); every search of it takes a `TableSearch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.configs import IndexedConfig
from rar_pipeline.core.retrieval.embedding import Embedded, embed_robustly
from rar_pipeline.core.retrieval.encoders.base import EncodeItem, Encoder


@dataclass(frozen=True)
class TableSearch:
    """How one search reads a config's table: which rows, how deep, which columns back.

    Attributes:
        pool: only the rows this pool holds (None: every row).
        plan: the table's ANN query parameters.
        modality: only rows of these candidate modalities (None or empty: every one).
        columns: table columns each hit carries besides query_index, pool, did and score.
    """

    pool: str | None
    plan: AnnPlan
    modality: Sequence[str] | None = None
    columns: Sequence[str] = ()


class SearchStore(Protocol):
    """What search and evaluation need from a vector store."""

    def table_names(self) -> list[str]: ...

    def count_rows(self, name: str) -> int: ...

    def row_hashes(self, name: str) -> pa.RecordBatchReader: ...

    def peek(self, name: str, columns: Sequence[str], n: int = 1) -> pd.DataFrame:
        """The first `n` rows' `columns` (what a table was made with, without a scan)."""
        ...

    def search_vectors(
        self, name: str, vectors: np.ndarray, k: int, search: TableSearch
    ) -> pd.DataFrame:
        """Each vector's k nearest rows: query_index, did, pools, columns, score; best first."""
        ...

    def search_hybrid(
        self, name: str, vector: np.ndarray, text: str, k: int, search: TableSearch
    ) -> pd.DataFrame:
        """One query's k best rows by dense and full-text search fused (query_index 0)."""
        ...


@dataclass
class DenseHits:
    """Queries' embeddings and hits.

    Attributes:
        embedded: the query vectors, and which queries could not be embedded.
        hits: query_index, did, pools, the columns asked for, score; best first per query
            (queries that could not be embedded have none).
        embed_seconds: time spent embedding.
        search_seconds: time spent searching the table.
    """

    embedded: Embedded
    hits: pd.DataFrame
    embed_seconds: float
    search_seconds: float


def dense_search(
    store: SearchStore,
    config: IndexedConfig,
    encoder: Encoder,
    items: Sequence[EncodeItem],
    k: int,
    search: TableSearch,
    *,
    progress: Callable[[int], None] | None = None,
) -> DenseHits:
    """Embed query items with the config's retriever and search the config's table.

    An item that cannot be embedded never fails the rest (`embed_robustly`): it ranks
    nothing, and `Embedded.failed` says why.

    Returns:
        The embeddings, each query's hits, and the time each half took.
    """
    started = time.perf_counter()
    embedded = embed_robustly(encoder, items, progress=progress)
    embedded_at = time.perf_counter()
    hits = store.search_vectors(config.table, embedded.vectors, k, search)
    if embedded.failed:
        hits = hits[~hits["query_index"].isin(list(embedded.failed))]
    return DenseHits(embedded, hits, embedded_at - started, time.perf_counter() - embedded_at)


def hits_by_query(hits: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Each query's hits (a table holds a candidate once, whatever pools hold it).

    Returns:
        query_index -> its hits, best first.
    """
    first = hits["query_index"].iloc[0] if len(hits) else 0
    if (hits["query_index"] == first).all():  # one query (what a person's search is)
        return {int(first): hits} if len(hits) else {}
    return {int(i): h for i, h in hits.groupby("query_index", sort=False)}
