"""Embedding throughput of the indexing path against the bare encoder, on the same items.

    python benchmarks/index_throughput.py [--data data/demo] [--artifacts artifacts/demo]
        [--config full] [--repeats 3]

Needs `make demo` (or `rar run`) first: the config's checkpoint and the corpus tables.

- bare: `embed_all(encoder, items)` over every row's (text, image): the encoder alone.
- pipeline: `core.index.build.update_index` into a fresh LanceDB table: reading what the
  table holds, diffing, embedding, Arrow conversion, the merge-insert commit and building
  the full-text index (and the ANN index, were the table big enough).

Ratio = pipeline items/s over bare items/s (the aim is >= 0.9). Each path runs `--repeats`
times, alternating, after one warm-up of each; the median is reported.

With `--cold` every repeat loads the encoder with an empty feature cache, so MiniLM and
EfficientNet run on every item, as when a new pool shard is indexed for the first time;
without it the backbone features come from the cache `make demo` filled and only the
trained heads run (what re-indexing after retraining `--trained heads` costs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.corpus.records import Candidate
from rar_pipeline.core.corpus.tables import frame_to_records
from rar_pipeline.core.index.ann import DEFAULT_PLAN
from rar_pipeline.core.index.build import update_index
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.index.rows import Provenance, index_rows
from rar_pipeline.core.layout import ArtifactLayout, ProjectLayout
from rar_pipeline.core.retrieval.checkpoint import CHECKPOINT_FILE, open_retriever
from rar_pipeline.core.retrieval.data import encode_item
from rar_pipeline.core.retrieval.embedding import embed_all
from rar_pipeline.core.retrieval.encoders.factory import load_encoder
from rar_pipeline.defs.resources import LanceDBResource


def main() -> None:
    project = ProjectLayout(Path.cwd())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=project.demo_data)
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--config", default="full", choices=sorted(INDEXED))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="an empty feature cache each time")
    args = parser.parse_args()
    root = args.data.resolve()
    paths = ArtifactLayout(args.artifacts or project.artifacts_for(root))
    config = INDEXED[args.config]
    layout = discover(root)
    pools = {s: frame_to_records(pd.read_parquet(paths.pool(s)), Candidate) for s in layout.pools}
    enhanced = None
    if config.representation.enhanced_corpus:
        frames = [pd.read_parquet(paths.enhanced_corpus(s)) for s in layout.pools]
        enhanced = {d: t for f in frames for d, t in zip(f["did"], f["enhanced_txt"], strict=True)}
    checkpoint = paths.checkpoint(config.retriever.name)
    if not (checkpoint / CHECKPOINT_FILE).is_file():
        raise SystemExit(f"no checkpoint at {checkpoint}: run make demo (or rar run) first")
    encoder, reference, _ = open_retriever(
        checkpoint, config.retriever.name, lambda: None, paths.perception_cache
    )
    rows = index_rows(config, pools, Provenance(reference), enhanced)
    items = [encode_item(t, i, root) for t, i in zip(rows["text"], rows["img_path"], strict=True)]

    def fresh():  # noqa: ANN202 - the encoder, with an empty feature cache when --cold
        if not args.cold:
            return encoder
        return load_encoder(checkpoint, cache_dir=Path(tempfile.mkdtemp(prefix="rar-cold-")))

    def bare() -> float:
        model = fresh()
        started = time.perf_counter()
        embed_all(model, items)
        return time.perf_counter() - started

    def pipeline() -> float:
        model = fresh()
        with tempfile.TemporaryDirectory() as tmp:
            store = LanceDBResource(uri=tmp)
            started = time.perf_counter()
            update_index(store, "bench", rows, model, root, DEFAULT_PLAN)
            return time.perf_counter() - started

    bare(), pipeline()  # warm-up: model weights, feature caches, LanceDB
    times: dict[str, list[float]] = {"bare": [], "pipeline": []}
    for _ in range(args.repeats):
        times["bare"].append(bare())
        times["pipeline"].append(pipeline())
    rate = {k: len(items) / statistics.median(v) for k, v in times.items()}
    cache = "cold feature cache" if args.cold else "warm feature cache"
    print(f"{len(items)} items ({args.config}: {reference}, {cache}), median of {args.repeats}")
    print("| path | items/s | seconds (each repeat) |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {rate[k]:.0f} | {', '.join(f'{t:.2f}' for t in v)} |")
    print(f"ratio pipeline / bare: {rate['pipeline'] / rate['bare']:.2f}")


if __name__ == "__main__":
    main()
