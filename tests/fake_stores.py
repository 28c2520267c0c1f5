"""Test doubles of the project's stores that production code never uses.

`FakeVectorStore` stands in for `defs.resources.lancedb.LanceDBResource`: the same
`VectorStore` methods over in-memory frames, searched exactly (no ANN index).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import PrivateAttr

from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.rows import KEY, ROW_HASHES
from rar_pipeline.core.search.store import TableSearch
from rar_pipeline.defs.resources import lancedb
from rar_pipeline.defs.resources.lancedb import RRF_K, TEXT_COLUMN, scored_hits


class FakeVectorStore(dg.ConfigurableResource):
    """In-memory brute-force stand-in for `LanceDBResource` (L2 distance, like LanceDB)."""

    uri: str = "memory://"
    _tables: dict[str, pd.DataFrame] = PrivateAttr(default_factory=dict)
    _versions: dict[str, int] = PrivateAttr(default_factory=dict)

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int:
        if mode == "append" and name in self._tables:
            frame = pd.concat([self._tables[name], frame], ignore_index=True)
        self._tables[name] = frame.reset_index(drop=True)
        return len(self._tables[name])

    def table_names(self) -> list[str]:
        return sorted(self._tables)

    def count_rows(self, name: str) -> int:
        return len(self._tables[name])

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame:
        table = self._tables[name]
        matrix = np.stack(table["vector"].to_numpy()).astype(np.float32)
        distance = ((matrix - np.asarray(vector, dtype=np.float32)) ** 2).sum(axis=1)
        order = np.argsort(distance, kind="stable")[:k]
        return table.iloc[order].assign(distance=distance[order]).reset_index(drop=True)

    def drop_table(self, name: str) -> None:
        self._tables.pop(name, None)
        self._versions.pop(name, None)

    def peek(self, name: str, columns: Sequence[str], n: int = 1) -> pd.DataFrame:
        return self._tables[name][list(columns)].head(n).reset_index(drop=True)

    def row_hashes(self, name: str) -> pa.RecordBatchReader:
        frame = self._tables.get(name, pd.DataFrame(columns=ROW_HASHES.names))
        table = pa.Table.from_pandas(frame[ROW_HASHES.names], ROW_HASHES, preserve_index=False)
        batches = table.to_batches(lancedb.HASH_BATCH_ROWS)  # read when called: tests patch it
        return pa.RecordBatchReader.from_batches(ROW_HASHES, batches)

    def upsert(self, name: str, rows: pa.Table, delete: pd.DataFrame) -> int:
        rows = rows.to_pandas()
        table = self._tables.get(name, rows.iloc[0:0])
        drop = set(rows["did"]) | set(delete["did"])
        keep = [d not in drop for d in table["did"]]
        self._tables[name] = pd.concat([table[keep], rows], ignore_index=True)
        self._versions[name] = self._versions.get(name, 0) + 1
        return self._versions[name]

    def update_pools(self, name: str, pools: pa.Table) -> int:
        new = dict(zip(pools.column("did").to_pylist(), pools.column("pools").to_pylist(),
                       strict=True))  # fmt: skip
        table = self._tables[name]
        table["pools"] = [new.get(d, p) for d, p in zip(table["did"], table["pools"], strict=True)]
        self._versions[name] += 1
        return self._versions[name]

    def build_indexes(self, name: str, plan: AnnPlan) -> dict[str, Any]:
        rows = len(self._tables[name])
        return {**plan.describe(rows), "fts_index": TEXT_COLUMN, "rows": rows,
                "unindexed_rows": 0, "table_version": self._versions[name]}  # fmt: skip

    def _rows(self, name: str, search: TableSearch) -> pd.DataFrame:
        table = self._tables[name]
        if search.pool is not None:
            table = table[[search.pool in list(p) for p in table["pools"]]]
        if search.modality:
            table = table[table["modality"].isin(list(search.modality))]
        return table.reset_index(drop=True)

    def search_vectors(
        self, name: str, vectors: np.ndarray, k: int, search: TableSearch
    ) -> pd.DataFrame:
        """Exact cosine search (the fake has no ANN index; `search.plan` is ignored)."""
        table = self._rows(name, search)
        parts = []
        if len(table):
            matrix = np.stack(table["vector"].to_numpy()).astype(np.float32)
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            for i, vector in enumerate(np.asarray(vectors, dtype=np.float32)):
                cosine = matrix @ (vector / max(float(np.linalg.norm(vector)), 1e-12))
                order = np.argsort(-cosine, kind="stable")[:k]
                parts.append(table.iloc[order].assign(query_index=i, score=cosine[order]))
        return scored_hits(parts, search.columns)

    def search_hybrid(
        self, name: str, vector: np.ndarray, text: str, k: int, search: TableSearch
    ) -> pd.DataFrame:
        """Reciprocal rank fusion (k=60) of exact cosine search and word-overlap search."""
        table = self._rows(name, search)
        dense = self.search_vectors(name, vector[None, :], len(table), search)
        words = set(re.findall(r"\w+", text.lower()))
        overlap = [len(words & set(re.findall(r"\w+", str(t).lower()))) for t in table["text"]]
        lexical = [i for i in np.argsort(-np.asarray(overlap), kind="stable") if overlap[i]]
        fused: dict[str, float] = {}
        ranked = [list(dense["did"]), [table["did"][i] for i in lexical]]
        for keys in ranked:
            for rank, key in enumerate(keys):
                fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank + 1)
        best = sorted(fused, key=lambda key: -fused[key])[:k]
        rows = table.set_index(KEY[0]).loc[best].reset_index()
        rows = rows.assign(query_index=0, score=[fused[key] for key in best])
        return scored_hits([rows], search.columns)

    def table_version(self, name: str) -> int:
        return self._versions[name]
