"""How fresh a big index stays: a 1,000-row change searchable, then indexed, and search meanwhile.

    python benchmarks/index_freshness.py [--rows 1000000] [--dim 384] [--changed 1000]
        [--changes 5] [--queries 200] [--work DIR] [--full]

Writes a `--rows` candidate pool as 100k-row `candidate_pool` shards (Parquet; text
candidates of 20-60 words, each with a clustered 384-d unit vector from
benchmarks/ann_search.py's `Corpus`) and builds the `none` config's table from them through
the index asset's own code (`iter_index_rows` into `update_index`): rows, then full-text
and IVF_HNSW_SQ indexes (`AnnPlan()`). Then `--changes` times:

    update       `--changed` rows get new texts and vectors (their shards rewritten), then
                 the index asset's update: every shard read, the rows diffed against the
                 table's hashes, the changed ones embedded and upserted.
                 When it returns the rows are searchable; the benchmark checks that each
                 changed row's own vector finds it at rank 1 (searched exactly, beside the
                 index).
    maintain     `LanceDBResource.maintain_indexes` (what the `maintain_indexes` job runs):
                 a delta segment for the new rows, the deltas merged past `max_deltas`.

Search is measured after the build, after the first update (rows pending) and after each
maintenance: `--queries` held-out queries (after 50 warm-up queries), recall@10 against an
exact numpy search over the vectors the table holds at that moment, and p50/p95 of

    bare         LanceDB's own query, top 10, nothing but the did back
                 (`table.search(q).distance_type("cosine").nprobes().ef().limit(10)`)
    store        the graph's `LanceDBResource.search_vectors` for one query with the columns
                 a search hit shows (what `rar search` and evaluation call)

Then search at each `--nprobes` (IVF partitions searched; `AnnPlan().nprobes` is the
default), and `--full` ends with a full maintenance (LanceDB's `optimize()`: compaction,
every segment merged), the weekly schedule's. The encoder is a lookup of the generated vectors (the
retriever's own cost is benchmarks/index_throughput.py's). The last line is JSON, with the
process' peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ann_search import Corpus  # noqa: E402
from rar_pipeline.core.index.ann import AnnPlan  # noqa: E402
from rar_pipeline.core.index.build import update_index  # noqa: E402
from rar_pipeline.core.index.configs import INDEXED  # noqa: E402
from rar_pipeline.core.index.maintenance import MaintenancePolicy  # noqa: E402
from rar_pipeline.core.index.rows import Provenance, iter_index_rows  # noqa: E402
from rar_pipeline.core.search.searcher import HIT_COLUMNS  # noqa: E402
from rar_pipeline.core.search.store import TableSearch  # noqa: E402
from rar_pipeline.defs.resources import LanceDBResource  # noqa: E402

CHUNK = 100_000
WORDS = [f"w{i}" for i in range(20_000)]
TABLE = "bench"
WARMUP = 50


class SyntheticPool:
    """The candidate pool, as pool shards of `CHUNK` rows (`candidate_pool` tables).

    A text starts with its row's number, so the encoder finds the row's generated vector;
    `change` draws new vectors for some rows and rewrites their texts in their shards.
    """

    def __init__(self, n: int, dim: int, work: Path) -> None:
        self.n, self.corpus, self.folder = n, Corpus(dim, 0), work / "pool"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vectors = np.lib.format.open_memmap(
            work / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim)
        )
        self.version = np.zeros(n, dtype=np.int32)
        rng = np.random.default_rng([0, 3])
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            self.vectors[start:stop] = self.corpus.draw(rng, stop - start)[0]
            self._write(start // CHUNK)

    def text(self, i: int) -> str:
        rng = random.Random(i * 1_000 + int(self.version[i]))
        return f"r{i} v{self.version[i]} " + " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))

    def _write(self, shard: int) -> None:
        ids = range(shard * CHUNK, min(self.n, (shard + 1) * CHUNK))
        frame = pd.DataFrame({"did": [f"1:{i}" for i in ids], "modality": "text",
                              "txt": [self.text(i) for i in ids], "img_path": None,
                              "src_content": None})  # fmt: skip
        frame.to_parquet(self.folder / f"shard{shard:03d}.parquet")

    def shards(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.folder.glob("*.parquet"))}

    def change(self, ids: np.ndarray, rng: np.random.Generator) -> None:
        self.vectors[ids] = self.corpus.draw(rng, len(ids))[0]
        self.version[ids] += 1
        for shard in sorted({int(i) // CHUNK for i in ids}):
            self._write(shard)

    def rows(self):
        """The index rows, chunk by chunk, as the index asset reads them."""
        return iter_index_rows(INDEXED["none"], self.shards(), Provenance("none@bench"))


class LookupEncoder:
    """Embeds a row's text as the vector generated for it (no model: the store is timed)."""

    name = "lookup"

    def __init__(self, corpus: SyntheticPool) -> None:
        self.corpus = corpus

    @property
    def dim(self) -> int:
        return self.corpus.vectors.shape[1]

    def embed(self, items):
        rows = [int(i.txt.split(" ", 1)[0][1:]) for i in items]
        return np.asarray(self.corpus.vectors[rows], dtype=np.float32)


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 10), np.int64)
    for start in range(0, len(vectors), CHUNK):
        sims = queries @ np.asarray(vectors[start : start + CHUNK]).T
        part = np.argpartition(-sims, 9, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(1000 * float(np.percentile(values, 50)), 2),
        "p95": round(1000 * float(np.percentile(values, 95)), 2),
    }


def measure(
    store: LanceDBResource, rows: SyntheticPool, queries: np.ndarray, plan: AnnPlan
) -> dict:
    """Recall@10 against exact search, and p50/p95 of the bare and the store's query."""
    truth = exact_top10(rows.vectors, queries[WARMUP:])
    table = store.connect().open_table(TABLE)
    search = TableSearch(None, plan, columns=HIT_COLUMNS)

    def bare(q: np.ndarray):
        query = table.search(q).distance_type("cosine").nprobes(plan.nprobes).ef(plan.ef)
        return query.select(["did"]).limit(10).to_arrow()["did"].to_pylist()

    def graph(q: np.ndarray):
        return store.search_vectors(TABLE, q[None], 10, search)["did"].tolist()

    out = {}
    for name, run in (("bare", bare), ("store", graph)):
        for q in queries[:WARMUP]:
            run(q)
        seconds, recall = [], []
        for q, true in zip(queries[WARMUP:], truth, strict=True):
            started = time.perf_counter()
            found = run(q)
            seconds.append(time.perf_counter() - started)
            recall.append(len({int(d.split(":")[1]) for d in found} & set(true.tolist())) / 10)
        out[name] = {**ms(seconds), "recall@10": round(float(np.mean(recall)), 3)}
    out["unindexed_rows"] = store.index_health(TABLE).unindexed_rows
    return out


def self_found(
    store: LanceDBResource, rows: SyntheticPool, ids: np.ndarray, plan: AnnPlan
) -> float:
    """The share of changed rows whose own new vector finds them at rank 1."""
    search = TableSearch(None, plan)
    hits = store.search_vectors(TABLE, np.asarray(rows.vectors[ids]), 1, search)
    found = dict(zip(hits["query_index"], hits["did"], strict=True))
    return float(np.mean([found.get(n) == f"1:{i}" for n, i in enumerate(ids)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--changed", type=int, default=1_000)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--work", type=Path, help="folder for the table (default: a temp dir)")
    parser.add_argument("--full", action="store_true", help="end with a full maintenance")
    parser.add_argument(
        "--nprobes",
        type=int,
        nargs="*",
        default=[2, 3, 4],
        help="also measure search at these nprobes, after the last maintenance",
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="index_freshness_"))
    work.mkdir(parents=True, exist_ok=True)
    store, plan, policy = LanceDBResource(uri=str(work / "lancedb")), AnnPlan(), MaintenancePolicy()
    rows, rng = SyntheticPool(args.rows, args.dim, work), np.random.default_rng([0, 9])
    queries = rows.corpus.draw(np.random.default_rng([0, 1]), WARMUP + args.queries)[0]
    report: dict = {"rows": args.rows, "dim": args.dim, "changed": args.changed, "plan": repr(plan)}

    def log(name: str, value) -> None:
        report[name] = value
        print(f"{name}: {json.dumps(value)}", flush=True)

    started = time.perf_counter()
    done = update_index(store, TABLE, rows.rows(), LookupEncoder(rows), work, plan)
    log("first build", {"s": round(time.perf_counter() - started, 1), "written": done.written})
    log("search after build", measure(store, rows, queries, plan))
    for change in range(1, args.changes + 1):
        ids = np.sort(rng.choice(args.rows, args.changed, replace=False))
        rows.change(ids, rng)
        started = time.perf_counter()
        done = update_index(store, TABLE, rows.rows(), LookupEncoder(rows), work, plan)
        searchable = time.perf_counter() - started
        found = self_found(store, rows, ids, plan)
        unindexed = done.index["unindexed_rows"]
        log(f"change {change}", {"searchable_s": round(searchable, 1), "written": done.written,
                                 "unindexed": unindexed, "self_found": found})  # fmt: skip
        if change == 1:
            log("search pending", measure(store, rows, queries, plan))
        started = time.perf_counter()
        kept = store.maintain_indexes(TABLE, policy)
        log(f"maintain {change}", {"indexed_s": round(time.perf_counter() - started, 1),
                                   "steps": kept["seconds"], "deltas": kept["after"]["deltas"],
                                   "self_found": self_found(store, rows, ids, plan)})  # fmt: skip
        if change in (1, args.changes):
            log(f"search after maintain {change}", measure(store, rows, queries, plan))
    for nprobes in args.nprobes:  # the recall knob, on the maintained table
        probed = replace(plan, nprobes=nprobes)
        log(f"search at nprobes {nprobes}", measure(store, rows, queries, probed))
    if args.full:
        started = time.perf_counter()
        kept = store.maintain_indexes(TABLE, policy, full=True)
        log("full maintenance", {"s": round(time.perf_counter() - started, 1),
                                 "steps": kept["seconds"]})  # fmt: skip
        log("search after full", measure(store, rows, queries, plan))
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
