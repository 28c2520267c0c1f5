"""Which vector index a table gets, and how it is searched: chosen by measurement.

Below `min_rows` a table is searched exactly (a flat scan of 50k rows takes ~0.1 s here
and is perfectly accurate); from there on it gets an approximate index. The defaults come
from `benchmarks/ann_search.py` on 1M x 384 clustered unit vectors on a 2-core machine
(benchmarks/RESULTS.md): IVF_HNSW_SQ with 256 partitions (~4k rows each), m 16,
ef_construction 150, queried with nprobes 5 and ef 50, gave recall@10 0.979 at p50 5-8 ms
(exact search: 2.5 s), built in 2.7 min with a 514 MB index. nprobes is the recall knob
(0.91 / 0.96 / 0.98 at 2 / 3 / 5); ef past 50 buys nothing; `refine_factor=2` (with ef
100) lifts recall to 0.999 for up to ~3 ms. Only 1M rows were measured: at M-BEIR's 5.6M
the partition count grows with the rows, and nprobes may need raising (an `AnnPlan`
field) to hold recall.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

METRIC = "cosine"  # embeddings are unit length: cosine distance = 1 - dot product


@dataclass(frozen=True)
class AnnPlan:
    """An ANN index's build and query parameters."""

    index_type: str = "IVF_HNSW_SQ"
    min_rows: int = 50_000
    rows_per_partition: int = 4_000  # num_partitions = ceil(rows / this): 250 at 1M
    m: int = 16  # HNSW: links per node
    ef_construction: int = 150  # HNSW: candidates while building
    num_sub_vectors: int | None = None  # PQ: sub-vectors (None: LanceDB's default)
    nprobes: int = 5  # IVF partitions searched per query
    ef: int = 50  # HNSW: candidates while searching
    refine_factor: int | None = None  # re-rank this many times k rows on full vectors

    def num_partitions(self, rows: int) -> int:
        return max(1, -(-rows // self.rows_per_partition))

    def needs_index(self, rows: int) -> bool:
        return rows >= self.min_rows

    def build_params(self, rows: int) -> dict[str, Any]:
        """Arguments of the LanceDB index config (`lancedb.index.<config_class>`)."""
        params: dict[str, Any] = {
            "distance_type": METRIC,
            "num_partitions": self.num_partitions(rows),
        }
        if "HNSW" in self.index_type:
            params |= {"m": self.m, "ef_construction": self.ef_construction}
        if self.index_type.endswith("PQ") and self.num_sub_vectors:
            params["num_sub_vectors"] = self.num_sub_vectors
        return params

    @property
    def config_class(self) -> str:
        """The `lancedb.index` class of this index type (IVF_HNSW_SQ -> IvfHnswSq)."""
        return "".join(part.capitalize() for part in self.index_type.split("_"))

    def query_params(self) -> dict[str, Any]:
        """What every search of an indexed table passes (ignored by an exact search)."""
        return {k: v for k, v in asdict(self).items() if k in ("nprobes", "ef", "refine_factor")}

    def describe(self, rows: int) -> dict[str, Any]:
        """What metadata records about the index of a table of `rows` rows."""
        if not self.needs_index(rows):
            return {"vector_index": f"none: exact search ({rows} rows < {self.min_rows})"}
        return {
            "vector_index": self.index_type,
            "index_params": {"index_type": self.index_type}
            | self.build_params(rows)
            | self.query_params(),
        }


DEFAULT_PLAN = AnnPlan()
