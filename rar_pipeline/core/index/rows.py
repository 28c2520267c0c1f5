"""The rows of a config's index table, and which of them need (re-)embedding.

One row per candidate, whatever the number of pools that hold it: `pools` lists them (M-BEIR
ships a candidate in its task's local pool and again in a union pool), so the union pool
costs no second row. Evaluation filters by pool (`array_has(pools, 'mbeir_cirr_task7_cand_pool')`,
UniIR's local setting) or searches every row (global setting).

A row's `row_hash` covers everything that made its vector (retriever, text, image, modality
and the versions recorded beside them), so updating an index embeds exactly the rows that
are new or changed, rewrites only the `pools` of a candidate whose pools changed, and
deletes the rows whose candidate is gone: a new pool shard embeds only its own new
candidates, a caption prompt edit re-embeds the rows it changed.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.corpus.tables import iter_parquet_batches
from rar_pipeline.core.index.configs import IndexedConfig
from rar_pipeline.core.index.membership import Memberships, did_keys

# Bump when what a row holds or how it is embedded changes: part of the index assets'
# code versions and of every row's hash.
INDEX_VERSION = "index-2"  # 2: one row per candidate, its pools a list

ROW_COLUMNS = [
    "did",
    "pools",  # every pool shard that holds the candidate, in shard order
    "modality",
    "txt",  # the candidate's own text
    "enhanced_txt",  # the VLM's text, where the config reads the enhanced corpus
    "text",  # what the retriever embedded (and the full-text index covers)
    "img_path",  # relative to the data root
    "retriever",  # "<config>@<checkpoint hash>"
    "prompt_version",  # the enhanced corpus' version, where the config reads it
    "vlm_model",  # "<backend>/<model id>", where the config reads the enhanced corpus
    "row_hash",
]
KEY = ["did"]


@dataclass(frozen=True)
class Provenance:
    """What made a config's rows, recorded in every row.

    Attributes:
        retriever: the checkpoint that embeds them ("<config>@<hash of its files>").
        prompt_version: the enhanced corpus' version (configs that read it).
        vlm_model: the VLM backend and model that wrote the enhanced texts.
    """

    retriever: str
    prompt_version: str | None = None
    vlm_model: str | None = None


def index_rows(
    config: IndexedConfig,
    pools: Mapping[str, Sequence[Candidate]],
    provenance: Provenance,
    enhanced_corpus: Mapping[str, str | None] | None = None,
) -> pd.DataFrame:
    """Every candidate of every pool as `config` indexes it (`ROW_COLUMNS`, no vectors).

    Args:
        config: which retriever and representations.
        pools: pool shard -> its candidates.
        provenance: what made the rows.
        enhanced_corpus: did -> enhanced text (needed when the config reads it).

    Raises:
        ValueError: the config reads the enhanced corpus and none was given.
    """
    if config.representation.enhanced_corpus and enhanced_corpus is None:
        raise ValueError(f"config {config.name!r} needs the enhanced corpus")
    first: dict[str, Candidate] = {}
    held: dict[str, list[str]] = {}
    for pool, candidates in pools.items():
        for c in candidates:
            first.setdefault(c.did, c)
            if pool not in held.setdefault(c.did, []):
                held[c.did].append(pool)
    records = list(first.values())
    return _rows(
        config, [c.did for c in records], [held[c.did] for c in records],
        [str(c.modality) for c in records], [c.txt for c in records],
        [c.img_path for c in records], provenance, enhanced_corpus,
    )  # fmt: skip


def _rows(
    config: IndexedConfig,
    dids: list[str],
    pools: list[list[str]],
    modalities: list[str],
    txts: list[Any],
    img_paths: list[Any],
    provenance: Provenance,
    enhanced_corpus: Mapping[str, Any] | None,
) -> pd.DataFrame:
    """Candidates' rows from their columns, a column at a time.

    A row's hash is `files.values_hash` of INDEX_VERSION and what makes its vector (not its
    pools), in one digest per row (the same bytes: `str` of each value and a NUL).
    """
    rep = config.representation
    enhanced = enhanced_corpus if rep.enhanced_corpus else None
    versions = (
        [provenance.retriever, provenance.prompt_version, provenance.vlm_model]
        if rep.enhanced_corpus
        else [provenance.retriever, None, None]
    )
    txts, img_paths = [_value(t) for t in txts], [_value(p) for p in img_paths]
    enhanced_txt = [enhanced.get(d) for d in dids] if enhanced is not None else [None] * len(dids)
    # the candidate's text where it has no enhanced one (`pairs.candidate_text`)
    texts = txts if enhanced is None else [e or t for e, t in zip(enhanced_txt, txts, strict=True)]
    tail = "".join(f"{v}\0" for v in versions)
    hashes = [
        hashlib.sha256(
            f"{INDEX_VERSION}\0{d}\0{m}\0{t}\0{e}\0{x}\0{i}\0{tail}".encode()
        ).hexdigest()[:16]
        for d, m, t, e, x, i in zip(dids, modalities, txts, enhanced_txt, texts, img_paths,
                                    strict=True)
    ]  # fmt: skip
    columns = [dids, pools, modalities, txts, enhanced_txt, texts, img_paths]
    columns += [[v] * len(dids) for v in versions] + [hashes]
    return pd.DataFrame(dict(zip(ROW_COLUMNS, columns, strict=True)), columns=ROW_COLUMNS)


def _value(value: Any) -> Any:
    """A text column's value as a record holds it (None for a null read as NaN)."""
    return None if isinstance(value, float) and value != value else value


_MODALITIES = {str(m.value): str(m) for m in Modality}
INDEX_CHUNK_ROWS = 100_000  # candidates turned into rows, diffed, embedded, written at a time


def iter_index_rows(
    config: IndexedConfig,
    pools: Mapping[str, Path],
    provenance: Provenance,
    enhanced_corpus: Mapping[str, Path] | None = None,
    *,
    chunk_rows: int = INDEX_CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """`index_rows` read from the pool tables, `chunk_rows` candidates at a time.

    Args:
        config: which retriever and representations.
        pools: pool shard -> its `candidate_pool` table.
        provenance: what made the rows.
        enhanced_corpus: pool shard -> its `enhanced_corpus` table (needed when the config
            reads it). A candidate's row is made from the first shard that holds it, with
            that shard's enhanced text; `index_rows` with one did -> text map over every
            shard gives the same rows wherever the shards agree on a candidate (they do
            unless pools define it with different content, which the `queries` asset
            reports as a conflict).
        chunk_rows: candidates read at a time.

    Raises:
        ValueError: the config reads the enhanced corpus and none was given.
    """
    if config.representation.enhanced_corpus and enhanced_corpus is None:
        raise ValueError(f"config {config.name!r} needs the enhanced corpus")
    reads = enhanced_corpus if config.representation.enhanced_corpus else None
    members = Memberships.of_tables(pools)
    for shard, (pool, path) in enumerate(pools.items()):
        texts = _enhanced_texts(reads[pool], chunk_rows) if reads is not None else None
        for batch in iter_parquet_batches(path, chunk_rows):
            dids = batch.column("did").to_pylist()
            enhanced = texts.take(dids) if texts is not None else None  # (in step: all)
            first, held = members.lookup(dids)
            mine = np.flatnonzero(first == shard)  # a candidate's row comes from its first pool
            if not len(mine):
                continue
            batch = batch.take(pa.array(mine))
            yield _rows(
                config, [dids[i] for i in mine], [held[i] for i in mine],
                [_MODALITIES[m] for m in batch.column("modality").to_pylist()],
                batch.column("txt").to_pylist(), batch.column("img_path").to_pylist(),
                provenance, enhanced,
            )  # fmt: skip
    yield pd.DataFrame(columns=ROW_COLUMNS)


class _EnhancedTexts:
    """A shard's enhanced texts, read alongside its pool in the same order.

    Values are what `pd.read_parquet(table)["enhanced_txt"]` holds (NaN for a missing text
    in a string column), as the whole-table map gives them. Rows out of step with the pool
    fall back to a did -> text map of the shard.
    """

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self._path, self._chunk_rows = path, chunk_rows
        self._rows = self._iter()
        self._map: dict[str, Any] | None = None

    def _iter(self) -> Iterator[tuple[str, Any]]:
        columns = ["did", "enhanced_txt"]
        for batch in iter_parquet_batches(self._path, self._chunk_rows, columns):
            frame = batch.to_pandas()
            yield from zip(frame["did"], frame["enhanced_txt"], strict=True)

    def take(self, dids: Iterable[str]) -> dict[str, Any]:
        dids = list(dids)
        if self._map is None:
            pairs = list(itertools.islice(self._rows, len(dids)))
            if [d for d, _ in pairs] == dids:
                return dict(pairs)
            frame = pd.read_parquet(self._path, columns=["did", "enhanced_txt"])
            self._map = dict(zip(frame["did"], frame["enhanced_txt"], strict=True))
        return {d: self._map[d] for d in dids if d in self._map}


def _enhanced_texts(path: Path, chunk_rows: int) -> _EnhancedTexts:
    return _EnhancedTexts(path, chunk_rows)


@dataclass(frozen=True)
class RowDiff:
    """What an index update does: rows to embed and write, pools to rewrite, keys to delete."""

    write: pd.DataFrame  # new or changed rows (ROW_COLUMNS)
    delete: pd.DataFrame  # did and pools of rows whose candidate is gone
    unchanged: int  # rows whose vector stays (their pools may change: `repool`)
    repool: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=POOLS_COLUMNS))

    def by_pool(self) -> dict[str, dict[str, int]]:
        """Per pool: rows written and deleted (for metadata)."""
        out: dict[str, dict[str, int]] = {}
        for name, frame in (("written", self.write), ("deleted", self.delete)):
            for pool, n in frame["pools"].explode().dropna().value_counts().items():
                out.setdefault(str(pool), {"written": 0, "deleted": 0})[name] = int(n)
        return out


POOLS_COLUMNS = ["did", "pools"]


def diff_rows(existing: pd.DataFrame, rows: pd.DataFrame) -> RowDiff:
    """Compare a table's (did, pools, row_hash) with the rows it should hold, whole."""
    table = pa.Table.from_pandas(existing[ROW_HASHES.names], ROW_HASHES, preserve_index=False)
    held = ExistingRows(table.to_batches())
    return replace(held.diff(rows), delete=held.gone())


ROW_HASHES = pa.schema(
    [("did", pa.string()), ("pools", pa.list_(pa.string())), ("row_hash", pa.string())]
)


class ExistingRows:
    """A table's (did, pools, row_hash), compact, for diffing row chunks against it.

    Keys are 128-bit blake2b digests of the did, hashes and pools digests fixed 16-byte
    strings, in sorted numpy arrays (~60 bytes a row, where a frame takes ~250); `diff`
    marks the keys it sees, and `gone` is every key no chunk had.
    """

    def __init__(self, existing: Iterable[pa.RecordBatch]) -> None:
        """Read the table's (did, pools, row_hash) batches (`row_hashes`) one at a time."""
        keys, hashes, held, dids, pools = [], [], [], [], []
        for batch in existing:
            did = batch.column("did")
            keys.append(did_keys(did.to_pylist()))
            hashes.append(_hashes(batch.column("row_hash").to_pylist()))
            held.append(_pools_keys(batch.column("pools").to_pylist()))
            dids.append(did.cast(pa.string()))
            pools.append(batch.column("pools").cast(pa.list_(pa.string())))
        all_keys = np.concatenate(keys) if keys else np.empty(0, dtype="S16")
        self._order = np.argsort(all_keys, kind="stable")
        self._keys = all_keys[self._order]
        self._hashes = (np.concatenate(hashes) if hashes else np.empty(0, "S16"))[self._order]
        self._held = (np.concatenate(held) if held else np.empty(0, "S16"))[self._order]
        self._did = pa.concat_arrays(dids) if dids else pa.array([], pa.string())
        self._pools = pa.concat_arrays(pools) if pools else pa.array([], pa.list_(pa.string()))
        self._seen = np.zeros(len(all_keys), dtype=bool)

    def __len__(self) -> int:
        return len(self._keys)

    def diff(self, rows: pd.DataFrame) -> RowDiff:
        """This chunk's new or changed rows, and its unchanged ones whose pools changed.

        (No deletes: see `gone`.)
        """
        if not len(self._keys) or not len(rows):
            return RowDiff(rows.reset_index(drop=True), pd.DataFrame(columns=POOLS_COLUMNS), 0)
        keys = did_keys(rows["did"])
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[at] == keys
        self._seen[at[found]] = True
        changed = ~(found & (self._hashes[at] == _hashes(rows["row_hash"])))
        repool = ~changed & (self._held[at] != _pools_keys(rows["pools"]))
        return RowDiff(
            rows[changed].reset_index(drop=True),
            pd.DataFrame(columns=POOLS_COLUMNS),
            int((~changed).sum()),
            rows.loc[repool, POOLS_COLUMNS].reset_index(drop=True),
        )

    def gone(self) -> pd.DataFrame:
        """The did and pools of the rows no chunk held, in the table's order."""
        index = pa.array(np.sort(self._order[~self._seen]))
        did, pools = self._did.take(index), self._pools.take(index)
        return pd.DataFrame({"did": did.to_pylist(), "pools": pools.to_pylist()})


def _hashes(row_hashes: Iterable[Any]) -> np.ndarray:
    """Row hashes as fixed 16-byte strings (their first 16 characters)."""
    return np.array([str(h).encode()[:16] for h in row_hashes], dtype="S16")


def _pools_keys(pools: Iterable[Any]) -> np.ndarray:
    """16-byte digests of pools lists (equal lists, equal digests)."""
    return did_keys("\0".join(p) for p in pools)


def arrow_rows(rows: pd.DataFrame, vectors: np.ndarray) -> pa.Table:
    """Rows with their (len(rows), dim) vectors as an Arrow table of a fixed schema."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(rows):
        raise ValueError(f"expected ({len(rows)}, dim) vectors, got shape {vectors.shape}")
    columns = {
        c: pa.array([v if isinstance(v, str) else None for v in rows[c]], type=pa.string())
        for c in ROW_COLUMNS
        if c != "pools"
    }
    columns["pools"] = pools_array(rows["pools"])
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({c: columns[c] for c in [*ROW_COLUMNS, "vector"]})


def pools_array(pools: Iterable[Any]) -> pa.Array:
    """A `pools` column: a list of pool shards per row."""
    return pa.array([list(p) for p in pools], type=pa.list_(pa.string()))
