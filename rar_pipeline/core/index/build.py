"""Bring a config's index table up to date: embed only new or changed rows, then index.

The store is the `VectorStore` protocol of `defs.resources.lancedb` (LanceDB, or the fake
in tests); the encoder is the config's retriever checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.rows import (
    KEY,
    ROW_COLUMNS,
    ExistingRows,
    RowDiff,
    arrow_rows,
    pools_array,
)
from rar_pipeline.core.retrieval.data import encode_item
from rar_pipeline.core.retrieval.embedding import embed_robustly
from rar_pipeline.core.retrieval.encoders.base import Encoder


class IndexStore(Protocol):
    """What updating an index needs from a vector store."""

    def row_hashes(self, name: str) -> pa.RecordBatchReader: ...

    def drop_table(self, name: str) -> None: ...

    def upsert(self, name: str, rows: pa.Table, delete: pd.DataFrame) -> int: ...

    def update_pools(self, name: str, pools: pa.Table) -> int: ...

    def build_indexes(self, name: str, plan: AnnPlan) -> dict[str, Any]: ...


@dataclass
class IndexUpdate:
    """What one update did, for metadata and logs."""

    written: int
    deleted: int
    unchanged: int
    embed_seconds: float
    repooled: int = 0  # unchanged rows whose pools changed (no embedding)
    by_pool: dict[str, dict[str, int]] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    # rows left out (nothing embeddable) or embedded from their text alone (image failed):
    # {"did", "pools", "reason"}; both are tried again by the next update
    failed: list[dict[str, str]] = field(default_factory=list)
    degraded: list[dict[str, str]] = field(default_factory=list)
    rebuilt: str | None = None  # why the table was dropped and built afresh

    @property
    def items_per_s(self) -> float:
        return self.written / self.embed_seconds if self.embed_seconds else 0.0


def update_index(
    store: IndexStore,
    table: str,
    rows: pd.DataFrame | Iterable[pd.DataFrame],
    encoder: Encoder,
    root: Path,
    plan: AnnPlan,
    *,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> IndexUpdate:
    """Make `table` hold exactly `rows` (`rows.ROW_COLUMNS`), each embedded by `encoder`.

    `rows` may come as chunks (`rows.iter_index_rows`): each chunk is diffed against the
    table's keys and hashes (held compactly, `rows.ExistingRows`), embedded and upserted
    before the next is read (a row whose vector stays but whose pools changed gets its new
    `pools` alone), and the rows no chunk held are deleted at the end. The table
    ends the same either way; a run stopped between chunks leaves rows a rerun puts right.
    A table whose rows cannot be read (data files lost or damaged) is dropped and built
    afresh, and `IndexUpdate.rebuilt` says why: rematerializing is how a damaged index is
    repaired.

    Args:
        store: the vector store.
        table: the config's table.
        rows: every row the table should hold (`rows.index_rows`), whole or in chunks.
        encoder: the config's retriever.
        root: the data root that image paths are relative to.
        plan: the ANN plan (applied once the table is big enough).
        batch_size: items per encoder call.
        progress: called with the number of items embedded after each batch.
    """
    chunks = [rows] if isinstance(rows, pd.DataFrame) else rows
    done = IndexUpdate(0, 0, 0, 0.0)
    try:
        existing = ExistingRows(store.row_hashes(table))
    except Exception as exc:  # LanceDB raises OSError, RuntimeError, ... for lost files
        done.rebuilt = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        store.drop_table(table)
        existing = ExistingRows(store.row_hashes(table))
    wrote = False
    for chunk in chunks:
        diff = existing.diff(chunk)
        done.unchanged += diff.unchanged
        if len(diff.repool):
            dids = pa.array(diff.repool["did"].astype(str).tolist(), pa.string())
            pools = pools_array(diff.repool["pools"])
            store.update_pools(table, pa.table({"did": dids, "pools": pools}))
            done.repooled += len(diff.repool)
        if not len(diff.write):
            continue
        _count(done.by_pool, diff.by_pool())
        write, vectors = _embedded(diff.write, encoder, root, batch_size, progress, done)
        store.upsert(table, arrow_rows(write, vectors), pd.DataFrame(columns=KEY))
        done.written += len(write)
        wrote = True
    gone = existing.gone()
    if len(gone) or not wrote:
        empty = pd.DataFrame(columns=ROW_COLUMNS)
        store.upsert(table, arrow_rows(empty, np.zeros((0, encoder.dim))), gone)
        _count(done.by_pool, RowDiff(empty, gone, 0).by_pool())
    done.deleted = len(gone)
    done.index = store.build_indexes(table, plan)
    return done


def _count(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    for pool, counts in part.items():
        into = total.setdefault(pool, {"written": 0, "deleted": 0})
        for name, n in counts.items():
            into[name] += n


def _embedded(
    rows: pd.DataFrame,
    encoder: Encoder,
    root: Path,
    batch_size: int,
    progress: Callable[[int], None] | None,
    done: IndexUpdate,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Embed rows; those that failed are left out, degraded ones marked for a retry."""
    items = [
        encode_item(text, img, root)
        for text, img in zip(rows["text"], rows["img_path"], strict=True)
    ]
    started = time.perf_counter()
    embedded = embed_robustly(encoder, items, batch_size, progress)
    done.embed_seconds += time.perf_counter() - started

    def noted(reasons: dict[int, str]) -> list[dict[str, str]]:
        return [
            {"did": rows["did"].iloc[i], "pools": list(rows["pools"].iloc[i]), "reason": r}
            for i, r in sorted(reasons.items())
        ]

    done.failed += noted(embedded.failed)
    done.degraded += noted(embedded.degraded)
    write = rows.copy()
    # a degraded row keeps a hash that matches nothing: the next update embeds it again
    for i in embedded.degraded:
        write.iloc[i, write.columns.get_loc("row_hash")] = "retry"
    keep = np.array([i not in embedded.failed for i in range(len(write))], dtype=bool)
    return write[keep], embedded.vectors[keep]
