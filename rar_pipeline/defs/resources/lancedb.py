"""Vector tables: `LanceDBResource` (real LanceDB, local folder or s3://) and `FakeVectorStore`.

Besides whole-table writes and single-vector search, the store does what an index
needs: read the keys and row hashes it holds, upsert rows by (pool, did) and delete
others, build the full-text and (above a size) ANN indexes, and search many vectors at
once within one pool. Scores are cosine similarities (1 - LanceDB's cosine distance).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import PrivateAttr

from rar_pipeline.core.index.ann import METRIC, AnnPlan
from rar_pipeline.core.index.build import IndexStore
from rar_pipeline.core.search.rank import SearchStore

KEY = ["pool", "did"]
TEXT_COLUMN = "text"
DELETE_CHUNK = 500
HASH_BATCH_ROWS = 100_000  # rows per Arrow batch when the keys and row hashes are read
ROW_HASHES = pa.schema([("pool", pa.string()), ("did", pa.string()), ("row_hash", pa.string())])
SEARCH_CHUNK = 256  # query vectors per LanceDB search call
RRF_K = 60  # reciprocal rank fusion's constant (LanceDB's RRFReranker default)


def sql_string(value: str) -> str:
    """A SQL string literal (LanceDB filters are DataFusion SQL)."""
    return "'" + str(value).replace("'", "''") + "'"


def _filter(pool: str | None, modality: Sequence[str] | None = None) -> str | None:
    """The SQL filter of a search within a pool and/or among candidate modalities."""
    parts = []
    if pool is not None:
        parts.append(f"pool = {sql_string(pool)}")
    if modality:
        parts.append(f"modality IN ({', '.join(sql_string(m) for m in modality)})")
    return " AND ".join(parts) or None


def _scored(parts: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    """Hits of many searches, best first per query: query_index, pool, did, score, columns."""
    out = [*KEY, *[c for c in columns if c not in KEY]]
    if not parts:
        return pd.DataFrame(columns=["query_index", *out, "score"])
    hits = pd.concat(parts, ignore_index=True)
    hits = hits.sort_values(["query_index", "score"], ascending=[True, False], kind="stable")
    return hits[["query_index", *out, "score"]].reset_index(drop=True)


class VectorStore(IndexStore, SearchStore, Protocol):
    """What the pipeline needs from a vector database.

    What updating an index needs (`core.index.build.IndexStore`), what search and
    evaluation need (`core.search.rank.SearchStore`), and whole-table writes.
    """

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int: ...

    def count_rows(self, name: str) -> int: ...

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame: ...


class LanceDBResource(dg.ConfigurableResource):
    """LanceDB tables at `uri`: a local folder by default, or object storage (s3://...).

    Rows need a `vector` column (fixed-size float32) for `search`.
    """

    uri: str

    def connect(self) -> Any:
        import lancedb

        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        return lancedb.connect(self.uri)

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int:
        db = self.connect()
        if mode == "append" and name in self.table_names():
            table = db.open_table(name)
            table.add(frame)
        else:
            table = db.create_table(name, frame, mode="overwrite")
        return table.count_rows()

    def table_names(self) -> list[str]:
        return list(self.connect().list_tables().tables)

    def count_rows(self, name: str) -> int:
        return self.connect().open_table(name).count_rows()

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame:
        table = self.connect().open_table(name)
        hits = table.search(np.asarray(vector, dtype=np.float32)).limit(k).to_pandas()
        return hits.rename(columns={"_distance": "distance"})

    def drop_table(self, name: str) -> None:
        self.connect().drop_table(name, ignore_missing=True)

    def peek(self, name: str, columns: Sequence[str], n: int = 1) -> pd.DataFrame:
        table = self.connect().open_table(name)
        return table.search().select(list(columns)).limit(n).to_pandas()[list(columns)]

    # -- what an index needs
    def row_hashes(self, name: str) -> pa.RecordBatchReader:
        """(pool, did, row_hash) of every row, streamed in Arrow batches (none: no table)."""
        if name not in self.table_names():
            return pa.RecordBatchReader.from_batches(ROW_HASHES, [])
        table = self.connect().open_table(name)
        query = table.search().select([*KEY, "row_hash"]).limit(None)
        return query.to_batches(HASH_BATCH_ROWS)

    def upsert(self, name: str, rows: pa.Table, delete: pd.DataFrame) -> int:
        """Insert or replace `rows` by (pool, did), delete the `delete` keys; the new version.

        Each write is one LanceDB commit, retried by LanceDB when another writer commits
        first; a run stopped between them leaves rows a rerun's diff puts right.
        """
        table = self.connect().create_table(name, schema=rows.schema, exist_ok=True)
        if rows.num_rows and table.count_rows() == 0:
            table.add(rows)  # a new table: nothing to match
        elif rows.num_rows:
            builder = table.merge_insert(KEY).when_matched_update_all()
            builder.when_not_matched_insert_all().execute(rows)
        for start in range(0, len(delete), DELETE_CHUNK):
            chunk = delete.iloc[start : start + DELETE_CHUNK]
            table.delete(
                " OR ".join(
                    f"(pool = {sql_string(p)} AND did = {sql_string(d)})"
                    for p, d in zip(chunk["pool"], chunk["did"], strict=True)
                )
            )
        return int(table.version)

    def build_indexes(self, name: str, plan: AnnPlan) -> dict[str, Any]:
        """The full-text index on `text`, the ANN index once the table is big enough.

        An existing index is updated incrementally (`optimize`: fold in the rows it does
        not cover yet, compact small files), not rebuilt, and only when some rows are not
        in it: an update that changed nothing costs no rewrite of the table. (Rows deleted
        by an update stay masked until the next write's `optimize` compacts them away.)
        """
        import lancedb.index

        table = self.connect().open_table(name)
        rows = table.count_rows()
        indices = table.list_indices()
        have = {tuple(i.columns): i.index_type for i in indices}
        if any(i.num_unindexed_rows for i in indices):  # (index_stats reads centroids)
            table.optimize()
        if (TEXT_COLUMN,) not in have:
            table.create_index(TEXT_COLUMN, config=lancedb.index.FTS())
        if plan.needs_index(rows) and ("vector",) not in have:
            config = getattr(lancedb.index, plan.config_class)(**plan.build_params(rows))
            table.create_index("vector", config=config)
        return {
            **plan.describe(rows),
            "fts_index": TEXT_COLUMN,
            "rows": rows,
            "table_version": int(table.version),
        }

    def search_vectors(
        self,
        name: str,
        vectors: np.ndarray,
        k: int,
        *,
        pool: str | None,
        plan: AnnPlan,
        modality: Sequence[str] | None = None,
        columns: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Each vector's k nearest rows (of `pool` and `modality` only, when given).

        Returns:
            query_index, pool, did, any `columns` asked for, score (cosine similarity) per
            hit, best first.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        table = self.connect().open_table(name)
        where = _filter(pool, modality)
        select = [*KEY, *[c for c in columns if c not in KEY], "_distance"]
        parts = []
        for start in range(0, len(vectors), SEARCH_CHUNK):
            chunk = vectors[start : start + SEARCH_CHUNK]
            query = table.search(list(chunk)).distance_type(METRIC).limit(k)
            query = query.select(select).nprobes(plan.nprobes).ef(plan.ef)
            if plan.refine_factor:
                query = query.refine_factor(plan.refine_factor)
            if where is not None:
                query = query.where(where, prefilter=True)
            found = query.to_pandas()
            if "query_index" not in found:  # one vector: LanceDB leaves the column out
                found["query_index"] = 0
            found["query_index"] += start
            found["score"] = 1.0 - found.pop("_distance").astype(np.float64)
            parts.append(found)
        return _scored(parts, columns)

    def search_hybrid(
        self,
        name: str,
        vector: np.ndarray,
        text: str,
        k: int,
        *,
        pool: str | None,
        plan: AnnPlan,
        modality: Sequence[str] | None = None,
        columns: Sequence[str] = (),
    ) -> pd.DataFrame:
        """One query's k best rows: dense and full-text (`text`) search, fused by RRF.

        The two searches run apart (each with its own score column, within the same
        filter) and LanceDB's own `RRFReranker` (k=60) fuses them. The text is matched as
        plain words (`MatchQuery`), never parsed as query syntax: quotes, AND/OR, field
        names and wildcards a person types are words like any other.

        Returns:
            As `search_vectors` (query_index 0), with score the fused relevance.
        """
        from lancedb.query import MatchQuery
        from lancedb.rerankers import RRFReranker

        table = self.connect().open_table(name)
        where = _filter(pool, modality)
        select = [*KEY, *[c for c in columns if c not in KEY]]
        dense = table.search(np.asarray(vector, dtype=np.float32)).distance_type(METRIC)
        dense = dense.select([*select, "_distance"]).nprobes(plan.nprobes).ef(plan.ef)
        lexical = table.search(MatchQuery(text, TEXT_COLUMN), query_type="fts")
        lexical = lexical.select([*select, "_score"])
        found = []
        for query in (dense, lexical):
            query = query.with_row_id(True).limit(k)
            if where is not None:
                query = query.where(where, prefilter=True)
            found.append(query.to_arrow())
        fused = RRFReranker(K=RRF_K).rerank_hybrid(text, *found).to_pandas().head(k)
        fused = fused.assign(query_index=0, score=fused["_relevance_score"].astype(np.float64))
        return _scored([fused], columns)

    def table_version(self, name: str) -> int:
        return int(self.connect().open_table(name).version)


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
        frame = self._tables.get(name, pd.DataFrame(columns=[*KEY, "row_hash"]))
        table = pa.Table.from_pandas(frame[[*KEY, "row_hash"]], ROW_HASHES, preserve_index=False)
        return pa.RecordBatchReader.from_batches(ROW_HASHES, table.to_batches(HASH_BATCH_ROWS))

    def upsert(self, name: str, rows: pa.Table, delete: pd.DataFrame) -> int:
        rows = rows.to_pandas()
        table = self._tables.get(name, rows.iloc[0:0])
        drop = set(zip(rows["pool"], rows["did"], strict=True)) | set(
            zip(delete["pool"], delete["did"], strict=True)
        )
        keep = [(p, d) not in drop for p, d in zip(table["pool"], table["did"], strict=True)]
        self._tables[name] = pd.concat([table[keep], rows], ignore_index=True)
        self._versions[name] = self._versions.get(name, 0) + 1
        return self._versions[name]

    def build_indexes(self, name: str, plan: AnnPlan) -> dict[str, Any]:
        rows = len(self._tables[name])
        return {**plan.describe(rows), "fts_index": TEXT_COLUMN, "rows": rows,
                "table_version": self._versions[name]}  # fmt: skip

    def _rows(self, name: str, pool: str | None, modality: Sequence[str] | None):
        table = self._tables[name]
        if pool is not None:
            table = table[table["pool"] == pool]
        if modality:
            table = table[table["modality"].isin(list(modality))]
        return table.reset_index(drop=True)

    def search_vectors(
        self,
        name: str,
        vectors: np.ndarray,
        k: int,
        *,
        pool: str | None,
        plan: AnnPlan,
        modality: Sequence[str] | None = None,
        columns: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Exact cosine search (the fake has no ANN index; `plan` is ignored)."""
        table = self._rows(name, pool, modality)
        parts = []
        if len(table):
            matrix = np.stack(table["vector"].to_numpy()).astype(np.float32)
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            for i, vector in enumerate(np.asarray(vectors, dtype=np.float32)):
                cosine = matrix @ (vector / max(float(np.linalg.norm(vector)), 1e-12))
                order = np.argsort(-cosine, kind="stable")[:k]
                parts.append(table.iloc[order].assign(query_index=i, score=cosine[order]))
        return _scored(parts, columns)

    def search_hybrid(
        self,
        name: str,
        vector: np.ndarray,
        text: str,
        k: int,
        *,
        pool: str | None,
        plan: AnnPlan,
        modality: Sequence[str] | None = None,
        columns: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Reciprocal rank fusion (k=60) of exact cosine search and word-overlap search."""
        table = self._rows(name, pool, modality)
        dense = self.search_vectors(name, vector[None, :], len(table), pool=pool, plan=plan,
                                    modality=modality)  # fmt: skip
        words = set(re.findall(r"\w+", text.lower()))
        overlap = [len(words & set(re.findall(r"\w+", str(t).lower()))) for t in table["text"]]
        lexical = [i for i in np.argsort(-np.asarray(overlap), kind="stable") if overlap[i]]
        fused: dict[tuple[str, str], float] = {}
        ranked = [list(zip(dense["pool"], dense["did"], strict=True)),
                  [(table["pool"][i], table["did"][i]) for i in lexical]]  # fmt: skip
        for keys in ranked:
            for rank, key in enumerate(keys):
                fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank + 1)
        best = sorted(fused, key=lambda key: -fused[key])[:k]
        rows = table.set_index(KEY).loc[best].reset_index()
        rows = rows.assign(query_index=0, score=[fused[key] for key in best])
        return _scored([rows], columns)

    def table_version(self, name: str) -> int:
        return self._versions[name]
