"""The rows of a config's index table, and which of them need (re-)embedding.

One row per (pool, did): M-BEIR ships a candidate in its task's local pool and again in a
union pool, and evaluation filters by pool (`pool = 'mbeir_cirr_task7_cand_pool'`, UniIR's
local setting) or searches the union pool (global setting).

A row's `row_hash` covers everything that made it (retriever, text, image, modality and
the versions recorded beside them), so updating an index embeds exactly the rows that are
new or changed and deletes the rows whose candidate is gone: a new pool shard embeds only
its own candidates, a caption prompt edit re-embeds the rows it changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from rar_pipeline.core.corpus.records import Candidate
from rar_pipeline.core.files import values_hash
from rar_pipeline.core.index.configs import IndexedConfig
from rar_pipeline.core.retrieval.pairs import candidate_text

# Bump when what a row holds or how it is embedded changes: part of the index assets'
# code versions and of every row's hash.
INDEX_VERSION = "index-1"

ROW_COLUMNS = [
    "pool",
    "did",
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
KEY = ["pool", "did"]


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
    rep = config.representation
    if rep.enhanced_corpus and enhanced_corpus is None:
        raise ValueError(f"config {config.name!r} needs the enhanced corpus")
    enhanced = enhanced_corpus if rep.enhanced_corpus else None
    versions = (
        [provenance.retriever, provenance.prompt_version, provenance.vlm_model]
        if rep.enhanced_corpus
        else [provenance.retriever, None, None]
    )
    rows = []
    for pool, candidates in pools.items():
        for c in candidates:
            text = candidate_text(rep, c, enhanced)
            row = [
                pool,
                c.did,
                str(c.modality),
                c.txt,
                enhanced.get(c.did) if enhanced is not None else None,
                text,
                c.img_path,
                *versions,
            ]
            rows.append([*row, values_hash([INDEX_VERSION, *row[1:]])[:16]])
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


@dataclass(frozen=True)
class RowDiff:
    """What an index update does: rows to embed and write, keys to delete."""

    write: pd.DataFrame  # new or changed rows (ROW_COLUMNS)
    delete: pd.DataFrame  # KEY columns of rows whose candidate is gone
    unchanged: int

    def by_pool(self) -> dict[str, dict[str, int]]:
        """Per pool: rows written and deleted (for metadata)."""
        out: dict[str, dict[str, int]] = {}
        for name, frame in (("written", self.write), ("deleted", self.delete)):
            for pool, n in frame.groupby("pool").size().items():
                out.setdefault(str(pool), {"written": 0, "deleted": 0})[name] = int(n)
        return out


def diff_rows(existing: pd.DataFrame, rows: pd.DataFrame) -> RowDiff:
    """Compare a table's (pool, did, row_hash) with the rows it should hold."""
    if existing.empty:
        return RowDiff(rows, pd.DataFrame(columns=KEY), 0)
    merged = rows.merge(
        existing[[*KEY, "row_hash"]].rename(columns={"row_hash": "_old"}),
        on=KEY,
        how="left",
    )
    changed = (merged["_old"] != merged["row_hash"]).to_numpy()
    kept = set(zip(rows["pool"], rows["did"], strict=True))
    gone = [
        (p, d) for p, d in zip(existing["pool"], existing["did"], strict=True) if (p, d) not in kept
    ]
    return RowDiff(
        rows[changed].reset_index(drop=True),
        pd.DataFrame(gone, columns=KEY),
        int((~changed).sum()),
    )


def arrow_rows(rows: pd.DataFrame, vectors: np.ndarray) -> pa.Table:
    """Rows with their (len(rows), dim) vectors as an Arrow table of a fixed schema."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(rows):
        raise ValueError(f"expected ({len(rows)}, dim) vectors, got shape {vectors.shape}")
    columns = {
        c: pa.array([v if isinstance(v, str) else None for v in rows[c]], type=pa.string())
        for c in ROW_COLUMNS
    }
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table(columns)
