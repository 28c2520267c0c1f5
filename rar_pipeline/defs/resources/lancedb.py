"""Vector tables: `LanceDBResource` (real LanceDB, local folder or s3://).

Besides whole-table writes and single-vector search, the store does what an index
needs: read the keys and row hashes it holds, upsert rows by did and delete
others, build the full-text and (above a size) ANN indexes, and search many vectors at
once within one pool. Scores are cosine similarities (1 - LanceDB's cosine distance).
Tests' in-memory stand-in, `FakeVectorStore`, lives in `tests/fake_stores.py`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from rar_pipeline.core.index import maintenance
from rar_pipeline.core.index.ann import METRIC, AnnPlan
from rar_pipeline.core.index.build import IndexStore
from rar_pipeline.core.index.maintenance import IndexHealth, MaintenancePolicy
from rar_pipeline.core.index.rows import KEY, ROW_HASHES
from rar_pipeline.core.object_store import check_concurrent_writes, is_object_store, lancedb_options
from rar_pipeline.core.search.store import SearchStore, TableSearch

TEXT_COLUMN = "text"
# scalar indexes that make pool and modality filters prefilter fast
SCALAR_INDEXES = {"pools": "LABEL_LIST", "modality": "BITMAP"}
DELETE_CHUNK = 500
HASH_BATCH_ROWS = 100_000  # rows per Arrow batch when the keys and row hashes are read
HIT_KEY = ["did", "pools"]  # what every hit carries
SEARCH_CHUNK = 256  # query vectors per LanceDB search call
RRF_K = 60  # reciprocal rank fusion's constant (LanceDB's RRFReranker default)
_CONNECTIONS: dict[tuple[str, str, str, int], Any] = {}  # LanceDBResource.connect's
_READ_TABLES: dict[tuple[str, str, str, int, str], tuple[Any, float]] = {}  # and _read_table's
_CONNECTING = threading.Lock()
READ_FRESH_S = 1.0  # a kept table handle looks for newer versions at most this often


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    seconds[step] = time.perf_counter() - started


def sql_string(value: str) -> str:
    """A SQL string literal (LanceDB filters are DataFusion SQL)."""
    return "'" + str(value).replace("'", "''") + "'"


def _filter(pool: str | None, modality: Sequence[str] | None = None) -> str | None:
    """The SQL filter of a search within a pool and/or among candidate modalities."""
    parts = []
    if pool is not None:
        parts.append(f"array_has(pools, {sql_string(pool)})")
    if modality:
        parts.append(f"modality IN ({', '.join(sql_string(m) for m in modality)})")
    return " AND ".join(parts) or None


def scored_hits(parts: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    """Hits of many searches, best first per query: query_index, did, pools, columns, score."""
    out = [*HIT_KEY, *[c for c in columns if c not in HIT_KEY]]
    if not parts:
        return pd.DataFrame(columns=["query_index", *out, "score"])
    hits = pd.concat(parts, ignore_index=True)
    hits = hits.sort_values(["query_index", "score"], ascending=[True, False], kind="stable")
    return hits[["query_index", *out, "score"]].reset_index(drop=True)


def _hits_frame(parts: list[tuple[np.ndarray, pa.Table]], columns: list[str]) -> pd.DataFrame:
    """LanceDB's hits as `scored_hits` gives them, built from Arrow column by column."""
    index = np.concatenate([i for i, _ in parts]) if parts else np.empty(0, np.int64)
    distance = [t.column("_distance").to_numpy() for _, t in parts]
    score = 1.0 - np.concatenate(distance).astype(np.float64) if parts else np.empty(0)
    # best first per query (each search's rows come by query, nearest first)
    order = np.lexsort((-score, index))
    frame = {"query_index": index[order]}
    for c in columns:
        values = [v for _, t in parts for v in t.column(c).to_pylist()]
        frame[c] = [values[i] for i in order]
    frame["score"] = score[order]
    return pd.DataFrame(frame, columns=["query_index", *columns, "score"])


class VectorStore(IndexStore, SearchStore, Protocol):
    """What the pipeline needs from a vector database.

    What updating an index needs (`core.index.build.IndexStore`), what search and
    evaluation need (`core.search.store.SearchStore`), and whole-table writes.
    """

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int: ...

    def count_rows(self, name: str) -> int: ...

    def search(self, name: str, vector: np.ndarray, k: int) -> pd.DataFrame: ...


class MaintenanceSection(dg.Config, MaintenancePolicy):
    """When maintenance folds rows into the indexes (see `MaintenancePolicy`)."""


class LanceDBResource(dg.ConfigurableResource):
    """LanceDB tables at `uri`: a local folder by default, or object storage (s3://...).

    On object storage the endpoint comes from the settings (`core.object_store`), and
    before its first write a process checks that the store honours conditional writes,
    which LanceDB's concurrent writers rely on; it refuses to write where they are
    ignored, unless `single_writer` says only one index run writes at a time.
    Rows need a `vector` column (fixed-size float32) for `search`.
    """

    uri: str
    s3_endpoint_url: str = ""
    s3_region: str = ""
    single_writer: bool = False
    maintenance: MaintenanceSection = MaintenanceSection()

    def maintenance_policy(self) -> MaintenancePolicy:
        """When maintenance folds rows into the indexes (the `index` settings)."""
        return MaintenancePolicy.model_validate(self.maintenance.model_dump())

    def connect(self) -> Any:
        """The database: one connection per process and location, kept.

        LanceDB caches index files and table metadata in a connection's session; a new
        connection per query reads them again (~0.1 s a query on a 100k-row table,
        benchmarks/RESULTS.md "Index freshness"). Every `open_table` still reads the table's
        latest version, so a kept connection sees every write.
        """
        with _CONNECTING:
            if self._key() not in _CONNECTIONS:
                _CONNECTIONS[self._key()] = self._connect()
            return _CONNECTIONS[self._key()]

    def _key(self) -> tuple[str, str, str, int]:
        return (self.uri, self.s3_endpoint_url, self.s3_region, os.getpid())

    def _read_table(self, name: str) -> Any:
        """A table to search, its handle kept (reopening it costs ~1 ms of a ~4 ms query).

        The handle looks for a newer version at most every `READ_FRESH_S` seconds, so a
        search sees another process' write within a second; this process' own writes
        drop it (`_writer`).
        """
        key, now = (*self._key(), name), time.monotonic()
        table, checked = _READ_TABLES.get(key, (None, 0.0))
        if table is not None and now - checked < READ_FRESH_S:
            return table
        if table is not None:
            try:
                table.checkout_latest()
            except Exception:  # the table was dropped and made again
                table = None
        if table is None:
            table = self.connect().open_table(name)
        _READ_TABLES[key] = (table, now)
        return table

    def _connect(self) -> Any:
        import lancedb

        if not is_object_store(self.uri):
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            return lancedb.connect(self.uri)
        options = lancedb_options(self.s3_endpoint_url, self.s3_region)
        return lancedb.connect(self.uri, storage_options=options)

    def _writer(self, name: str | None = None) -> Any:
        """`connect()`, for a write: on object storage, once its conditional writes hold.

        A write to table `name` drops this process' kept read handle of it.
        """
        if name is not None:
            _READ_TABLES.pop((*self._key(), name), None)
        if is_object_store(self.uri) and not self.single_writer:
            check_concurrent_writes(self.uri, self.s3_endpoint_url, self.s3_region)
        return self.connect()

    def write_table(self, name: str, frame: pd.DataFrame, *, mode: str = "overwrite") -> int:
        db = self._writer(name)
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
        self._writer(name).drop_table(name, ignore_missing=True)

    def peek(self, name: str, columns: Sequence[str], n: int = 1) -> pd.DataFrame:
        table = self.connect().open_table(name)
        return table.search().select(list(columns)).limit(n).to_pandas()[list(columns)]

    # -- what an index needs
    def row_hashes(self, name: str) -> pa.RecordBatchReader:
        """(did, pools, row_hash) of every row, streamed in Arrow batches (none: no table)."""
        if name not in self.table_names():
            return pa.RecordBatchReader.from_batches(ROW_HASHES, [])
        table = self.connect().open_table(name)
        missing = [c for c in ROW_HASHES.names if c not in table.schema.names]
        if missing:  # e.g. a table of index-1's layout, a row per (pool, candidate)
            raise ValueError(f"{name} holds rows of an older layout (no {', '.join(missing)})")
        query = table.search().select(list(ROW_HASHES.names)).limit(None)
        return query.to_batches(HASH_BATCH_ROWS)

    def upsert(self, name: str, rows: pa.Table, delete: pd.DataFrame) -> int:
        """Insert or replace `rows` by did, delete the `delete` dids; the new version.

        Each write is one LanceDB commit, retried by LanceDB when another writer commits
        first; a run stopped between them leaves rows a rerun's diff puts right.
        """
        table = self._writer(name).create_table(name, schema=rows.schema, exist_ok=True)
        if rows.num_rows and table.count_rows() == 0:
            table.add(rows)  # a new table: nothing to match
        elif rows.num_rows:
            builder = table.merge_insert(KEY).when_matched_update_all()
            builder.when_not_matched_insert_all().execute(rows)
        for start in range(0, len(delete), DELETE_CHUNK):
            chunk = delete.iloc[start : start + DELETE_CHUNK]
            table.delete(f"did IN ({', '.join(sql_string(d) for d in chunk['did'])})")
        return int(table.version)

    def update_pools(self, name: str, pools: pa.Table) -> int:
        """Give existing rows (by did) new `pools`, leaving every other column; the version."""
        table = self._writer(name).open_table(name)
        table.merge_insert(KEY).when_matched_update_all().execute(pools)
        return int(table.version)

    def build_indexes(self, name: str, plan: AnnPlan) -> dict[str, Any]:
        """Create the indexes a table lacks: full text on `text`, ANN once big enough.

        Nothing else: rows written since an index was built are searched exactly beside
        it, so they are found at once, and folding them into the indexes is maintenance
        (`maintain_indexes`), off the update path. A table that grows past the ANN
        threshold gets its index here, once.
        """
        import lancedb.index

        table = self._writer(name).open_table(name)
        rows = table.count_rows()
        have = {tuple(i.columns) for i in table.list_indices()}
        if (TEXT_COLUMN,) not in have:
            table.create_index(TEXT_COLUMN, config=lancedb.index.FTS())
        for column, kind in SCALAR_INDEXES.items():
            if (column,) not in have:
                table.create_scalar_index(column, index_type=kind)
        if plan.needs_index(rows) and ("vector",) not in have:
            config = getattr(lancedb.index, plan.config_class)(**plan.build_params(rows))
            table.create_index("vector", config=config)
        return {
            **plan.describe(rows),
            "fts_index": TEXT_COLUMN,
            "rows": rows,
            "unindexed_rows": self.index_health(name).unindexed_rows,
            "table_version": int(table.version),
        }

    def index_health(self, name: str) -> IndexHealth:
        """How far the table's indexes are behind its rows (reads no index data)."""
        table = self.connect().open_table(name)
        segments = {d.name: len(d.segments) for d in table.to_lance().describe_indices()}
        unindexed = [i.num_unindexed_rows for i in table.list_indices()]
        return IndexHealth(
            rows=table.count_rows(),
            unindexed_rows=max(unindexed, default=0),
            deltas=max(segments.values(), default=1) - 1,
            indexes=segments,
        )

    def maintain_indexes(
        self, name: str, policy: MaintenancePolicy, *, full: bool = False
    ) -> dict[str, Any]:
        """Fold rows the indexes miss into them (`core.index.maintenance`); what it did.

        Delta segments for the rows no index covers, then the deltas merged into one once
        there are more than `policy.max_deltas`; with `full`, LanceDB's `optimize()`
        (compaction, old versions dropped) and every segment of an index merged into one.
        """
        before = self.index_health(name)
        todo = maintenance.plan(before, policy, full=full)
        seconds: dict[str, float] = {}
        if todo.full:
            with _timed(seconds, "compact"):
                self._writer(name).open_table(name).optimize()
        dataset = self._writer(name).open_table(name).to_lance()  # moves on as it commits

        def deltas() -> int:
            return max((len(d.segments) for d in dataset.describe_indices()), default=1) - 1

        def merge(step: str, latest: int) -> None:
            """Lance merges the latest segments, and the rows no index covers, into one."""
            with _timed(seconds, step):
                dataset.optimize.optimize_indices(num_indices_to_merge=latest)

        if todo.delta:
            merge("delta", 0)
        if todo.merge_deltas:
            merge("merge_deltas", deltas())
        if todo.full:
            merge("merge_all", deltas() + 1)
        after = self.index_health(name) if todo else before
        return {
            "table": name,
            "steps": list(seconds),
            "seconds": {step: round(s, 3) for step, s in seconds.items()},
            "before": asdict(before),
            "after": asdict(after),
        }

    def search_vectors(
        self, name: str, vectors: np.ndarray, k: int, search: TableSearch
    ) -> pd.DataFrame:
        """Each vector's k nearest rows (of the search's pool and modalities only, when given).

        Returns:
            query_index, did, pools, any `search.columns` asked for, score (cosine
            similarity) per hit, best first.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        table = self._read_table(name)
        where, plan = _filter(search.pool, search.modality), search.plan
        select = [*HIT_KEY, *[c for c in search.columns if c not in HIT_KEY], "_distance"]
        parts = []
        for start in range(0, len(vectors), SEARCH_CHUNK):
            chunk = vectors[start : start + SEARCH_CHUNK]
            query = table.search(list(chunk)).distance_type(METRIC).limit(k)
            query = query.select(select).nprobes(plan.nprobes).ef(plan.ef)
            if plan.refine_factor:
                query = query.refine_factor(plan.refine_factor)
            if where is not None:
                query = query.where(where, prefilter=True)
            found = query.to_arrow()  # (to_pandas costs ~3 ms a query more here)
            if "query_index" in found.column_names:
                index = found.column("query_index").to_numpy() + start
            else:  # one vector: LanceDB leaves the column out
                index = np.full(found.num_rows, start, dtype=np.int64)
            parts.append((index, found))
        return _hits_frame(parts, select[:-1])

    def search_hybrid(
        self, name: str, vector: np.ndarray, text: str, k: int, search: TableSearch
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

        table = self._read_table(name)
        where, plan = _filter(search.pool, search.modality), search.plan
        select = [*HIT_KEY, *[c for c in search.columns if c not in HIT_KEY]]
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
        return scored_hits([fused], search.columns)

    def table_version(self, name: str) -> int:
        return int(self.connect().open_table(name).version)
