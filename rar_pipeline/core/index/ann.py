"""Which vector index a table gets, and how it is searched: chosen by measurement.

Below `min_rows` a table is searched exactly (a flat scan is fast enough and perfectly
accurate); from there on it gets an approximate index. The settings come from
`benchmarks/ann_search.py` on 1M x 384 unit vectors on a 2-core machine (figures in
benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

METRIC = "cosine"  # embeddings are unit length: cosine distance = 1 - dot product


@dataclass(frozen=True)
class AnnPlan:
    """An ANN index's build and query parameters."""

    index_type: str = "IVF_HNSW_SQ"
    min_rows: int = 100_000
    rows_per_partition: int = 250_000  # num_partitions = ceil(rows / this)
    m: int = 20  # HNSW: links per node
    ef_construction: int = 300  # HNSW: candidates while building
    num_sub_vectors: int | None = None  # PQ: sub-vectors (None: LanceDB's default)
    nprobes: int = 20
    ef: int = 1500
    refine_factor: int | None = None

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
