"""What updating a big LanceDB index table costs: the first build, no change, a few changes.

    python benchmarks/index_update_cost.py [--rows 1000000] [--dim 384] [--changed 1000]
        [--work DIR]

Writes `--rows` synthetic index rows (random unit vectors, 20-60-word texts, the graph's
row schema) into a fresh table in 100k-row upserts, as `update_index` does when it is fed
the chunks of `iter_index_rows`. Then, through the graph's own `LanceDBResource`:

    first build      `build_indexes` on the new table (full-text + IVF_HNSW_SQ)
    unchanged        `build_indexes` again, nothing written in between
    changed          `--changed` rows rewritten (one upsert), then `build_indexes`
    changed again    another `--changed` rows, then `build_indexes`

The embedding is left out: it is the encoder's cost (benchmarks/index_throughput.py).
Each phase prints its seconds and the table's fragment count; the last line is the
process' peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.rows import KEY, ROW_COLUMNS, arrow_rows
from rar_pipeline.defs.resources import LanceDBResource

CHUNK = 100_000
WORDS = [f"w{i}" for i in range(20_000)]


def rows(start: int, stop: int, version: int, rng: random.Random) -> pd.DataFrame:
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(20, 60))) for _ in range(start, stop)]
    return pd.DataFrame(
        {
            "did": [f"1:{i}" for i in range(start, stop)],
            "pools": [["synth_cand_pool"]] * (stop - start),
            "modality": "text",
            "txt": texts,
            "enhanced_txt": None,
            "text": texts,
            "img_path": None,
            "retriever": "none@bench",
            "prompt_version": None,
            "vlm_model": None,
            "row_hash": [f"{version:04d}{i:012d}" for i in range(start, stop)],
        },
        columns=ROW_COLUMNS,
    )


def vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--changed", type=int, default=1_000)
    parser.add_argument("--work", type=Path, help="folder for the table (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="index_update_"))
    store, plan, table = LanceDBResource(uri=str(work / "lancedb")), AnnPlan(), "bench"
    rng, vrng = random.Random(0), np.random.default_rng(0)
    no_delete = pd.DataFrame(columns=KEY)
    results: dict[str, float] = {}

    def fragments() -> int:
        stats = store.connect().open_table(table).stats()
        return int(stats["fragment_stats"]["num_fragments"])

    def phase(name: str, started: float) -> None:
        results[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {results[name]} s, {fragments()} fragments", flush=True)

    started = time.perf_counter()
    for start in range(0, args.rows, CHUNK):
        chunk = rows(start, min(start + CHUNK, args.rows), 0, rng)
        store.upsert(table, arrow_rows(chunk, vectors(len(chunk), args.dim, vrng)), no_delete)
    phase("write", started)
    for name, changed in [("first build", 0), ("unchanged", 0), ("changed", 1),
                          ("changed again", 2)]:  # fmt: skip
        started = time.perf_counter()
        if changed:
            at = vrng.choice(args.rows - args.changed)
            chunk = rows(int(at), int(at) + args.changed, changed, rng)
            vecs = vectors(len(chunk), args.dim, vrng)
            store.upsert(table, arrow_rows(chunk, vecs), no_delete)
        store.build_indexes(table, plan)
        phase(name, started)
    peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"rows": args.rows, "dim": args.dim, "changed": args.changed,
                      "seconds": results, "peak_rss_mb": peak_mb}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
