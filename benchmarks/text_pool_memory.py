"""Memory of the text path on one big text-only pool shard: wall time and peak RSS per stage.

    python benchmarks/text_pool_memory.py [--rows 5600000] [--work DIR] [--stages ...]

Generates a synthetic M-BEIR corpus (one text-only candidate pool shard of `--rows` rows,
20-60 words each, ~0.1% malformed rows: bad JSON, a missing `txt`, a modality mismatch,
a repeated `did`; plus one tiny query task, which a corpus needs) and materializes the
graph's text path on it, each stage in a fresh process (`dg.materialize` of the real
assets on an ephemeral instance):

    candidate_pool    ingest + validation -> Parquet + quarantine
    corpus_captions   text items pass through (FakeVLM backend: it is never called)
    enhanced_corpus   the merge
    lancedb_index     `lancedb_index_corpus` (reads the enhanced corpus): rows, diff against
                      the table, embed, upsert, then the full-text and ANN indexes

The index stage embeds with a DETERMINISTIC HASH ENCODER, not a model: each text's
blake2b digest as a 32-d unit vector (`HashEncoder` below). The real text encoder (MiniLM
on 2 CPU cores, ~150 items/s) would take ~10 hours for 5.6M rows; what this stage measures
is the memory of building rows, diffing, upserting and indexing, which the encoder's
speed does not change.

Peak RSS is each stage process's `ru_maxrss` (`os.wait4`), wall time its elapsed time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SHARD = "mbeir_synth_task1_cand_pool"
STAGES = ["candidate_pool", "corpus_captions", "enhanced_corpus", "lancedb_index_corpus"]
WORDS = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 8))
    for i in range(20_000)
]


def generate(data: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Write the corpus; returns how many rows of each kind went in."""
    rng = random.Random(seed)
    pool = data / "cand_pool" / "local" / f"{SHARD}.jsonl"
    pool.parent.mkdir(parents=True, exist_ok=True)
    counts = {"rows": rows, "bad_json": 0, "missing_txt": 0, "mismatch": 0, "duplicate": 0}
    with pool.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            did = f"1:{i}"
            text = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            row = {"txt": text, "img_path": None, "modality": "text", "did": did}
            kind = i % 1000
            if kind == 101:
                counts["bad_json"] += 1
                fh.write(json.dumps(row)[:-7] + "\n")
                continue
            if kind == 303:
                counts["missing_txt"] += 1
                row.pop("txt")
            elif kind == 505:
                counts["mismatch"] += 1
                row["modality"] = "image"
            elif kind == 707:  # repeats the did of the row before (kind 706: always valid)
                counts["duplicate"] += 1
                row["did"] = f"1:{i - 1}"
            fh.write(json.dumps(row) + "\n")
    query = data / "query" / "test" / "mbeir_synth_task1_test.jsonl"
    query.parent.mkdir(parents=True, exist_ok=True)
    with query.open("w", encoding="utf-8") as fh:
        for i in range(10):
            fh.write(
                json.dumps(
                    {
                        "qid": f"1:q{i}",
                        "query_txt": "find " + WORDS[i],
                        "query_img_path": None,
                        "query_modality": "text",
                        "pos_cand_list": [f"1:{i}"],
                        "neg_cand_list": [],
                        "task_id": 1,
                    }
                )
                + "\n"
            )
    return counts


class HashEncoder:
    """A deterministic stand-in encoder, NOT a model: blake2b of the text -> a unit vector."""

    name = "hash"

    def __init__(self, dim: int = 32) -> None:
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, items: Sequence) -> np.ndarray:
        raw = b"".join(
            hashlib.blake2b((i.txt or "").encode(), digest_size=self._dim).digest() for i in items
        )
        vectors = np.frombuffer(raw, dtype=np.uint8).reshape(len(items), self._dim)
        vectors = vectors.astype(np.float32) - 127.5
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    # what the graph asks of a trainable encoder's resource (never trained here)
    def save(self, *_: object, **__: object) -> None:  # pragma: no cover
        raise NotImplementedError


def run_stage(stage: str, data: Path, out: Path) -> int:
    """Materialize one stage of the text path (in this process)."""
    import dagster as dg

    from rar_pipeline.core.corpus.mbeir import discover
    from rar_pipeline.definitions import build_assets
    from rar_pipeline.defs.partitions import register_corpus_partitions
    from rar_pipeline.defs.resources import CorpusResource, LanceDBResource, RetrieverResource

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fakes
    from tests.fake_mlflow import FakeMlflow
    from tests.fake_vlm import FakeVLMResource

    class HashRetriever(RetrieverResource):
        def create(self, cache_dir: Path | None = None):  # type: ignore[override]
            return HashEncoder()

    corpus = CorpusResource(data_root=str(data), artifacts_dir=str(out), image_check="exists")
    vlm = FakeVLMResource()
    instance = dg.DagsterInstance.ephemeral()
    register_corpus_partitions(instance, discover(data))
    resources = {
        "corpus": corpus,
        "vlm": vlm,
        "retriever": HashRetriever(),
        "mlflow": FakeMlflow(),
        "lancedb": LanceDBResource(uri=str(corpus.artifacts().lancedb)),
    }
    partitioned = stage != "lancedb_index_corpus"
    result = dg.materialize(
        build_assets(vlm),
        selection=[stage],
        partition_key=SHARD if partitioned else None,
        resources=resources,
        instance=instance,
        raise_on_error=True,
    )
    (event,) = result.asset_materializations_for_node(stage)
    md = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
    keep = ["dagster/row_count", "quarantined", "quarantined_by_reason", "items_by_type",
            "rows_embedded", "rows_deleted", "rows_unchanged", "vector_index"]  # fmt: skip
    print("METADATA " + json.dumps({k: md[k] for k in keep if k in md}, default=str))
    return 0


def measure(stage: str, data: Path, out: Path) -> dict:
    """Run a stage in a fresh process: its wall seconds and peak RSS."""
    started = time.perf_counter()
    command = [sys.executable, __file__, "--stage", stage, "--data", str(data), "--out", str(out)]
    with (out.parent / f"{stage}.log").open("w") as log:  # Dagster's event log
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        stdout = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    metadata = next(
        (json.loads(line[9:]) for line in stdout.splitlines() if line.startswith("METADATA ")), {}
    )
    return {
        "stage": stage,
        "exit": code,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux: kB
        "metadata": metadata,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_600_000)
    parser.add_argument("--work", type=Path, help="folder for the corpus and outputs (kept)")
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return run_stage(args.stage, args.data, args.out)

    work = args.work or Path(tempfile.mkdtemp(prefix="text_pool_"))
    data, out = work / "data", work / "out"
    pool = data / "cand_pool" / "local" / f"{SHARD}.jsonl"
    marker = work / "rows.json"
    if not (marker.is_file() and json.loads(marker.read_text())["rows"] == args.rows):
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        counts = generate(data, args.rows)
        marker.write_text(json.dumps(counts))
        print(f"generated {counts} in {time.perf_counter() - started:.0f} s")
    import rar_pipeline

    print(f"code: {Path(rar_pipeline.__file__).parent}")
    print(f"pool: {pool} ({pool.stat().st_size / 1e9:.2f} GB), rows {args.rows:,}")
    results = []
    for stage in args.stages:
        result = measure(stage, data, out)
        results.append(result)
        print(json.dumps(result), flush=True)
        if result["exit"] != 0:
            break
    print()
    print("| stage | seconds | peak RSS (MB) |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mb']:,} |")
    return max(r["exit"] for r in results)


if __name__ == "__main__":
    raise SystemExit(main())
