"""Search latency and throughput on a corpus' index: `Searcher` per query, in batches, and
the search page's requests.

    python benchmarks/search_latency.py [--data data/demo] [--config full] [--limit 300]
        [--skip-page]

Needs `make demo` (or `rar run`) first. The queries are the corpus' test queries (text, and
image where they have one); every figure is per query on this machine.

- seen: queries the pipeline enhanced already. Enhancement is a cache hit (no VLM call),
  and the encoder's backbone features come from its cache.
- miss: the same queries through an empty enhancement cache. The offline backend generates
  every rewrite and caption again; the backbone features stay cached.
- unseen: content no cache has seen, with each query's type unchanged. Text queries get a
  suffix (MiniLM embeds new text); image queries get a copy of their image with one pixel
  changed, differently on every run (new bytes: the VLM generates, and perception
  (EfficientNet, OCR, colours) and the encoder's image features run afresh). Modification
  queries still hit the enhancement cache: their prompt reads the text alone.
- bare_lancedb: LanceDB's own query (top 10 dids, the table opened once) for the same
  query vectors, timed alone: what `seen`'s search is compared with
  (`seen_search_over_bare_p50`).
- hybrid: `seen`, with dense and full-text hits fused.
- batches: `search_many` throughput (queries/s) at several batch sizes, on `seen` queries.
- page: `rar serve` in its own process. GET /api/search (text) and POST / with an image
  upload (the HTML page), each timed at the client.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from rar_pipeline.core.evaluation.evaluate import load_test_queries
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.retrieval.encoders.base import EncodeItem
from rar_pipeline.core.search.enhance import QueryEnhancer
from rar_pipeline.core.search.query import SearchQuery
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.searchers import Searchers


def pct(values: list[float]) -> dict[str, float]:
    ms = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2)}  # fmt: skip


def per_query(searcher, queries, **kwargs) -> dict[str, dict[str, float]]:
    parts: dict[str, list[float]] = {"enhance": [], "embed": [], "search": [], "total": []}
    calls = 0.0
    for q in queries:
        result = searcher.search(q, 10, **kwargs)
        calls += result.vlm_calls
        for name in parts:
            parts[name].append(result.seconds[name])
    out = {name: pct(values) for name, values in parts.items()}
    out["vlm_calls_per_query"] = {"mean": round(calls / len(queries), 3)}
    return out


def bare(searcher, queries) -> dict[str, float]:
    """LanceDB's own query on the same table for the same query vectors, timed alone.

    The table is opened once; each query asks for the top 10 dids (cosine), nothing else:
    the engine's cost, which `seen`'s search is compared with.
    """
    items = [searcher.search(q, 1).searched_text for q in queries]  # (warms the caches)
    vectors = searcher.encoder.embed(
        [EncodeItem(t, q.image) for t, q in zip(items, queries, strict=True)]
    )
    table = searcher.store.connect().open_table(searcher.config.table)

    def query(vector):
        found = table.search(vector).distance_type("cosine").limit(10).select(["did"])
        return found.to_arrow()

    for vector in vectors[:20]:
        query(vector)
    seconds = []
    for vector in vectors:
        started = time.perf_counter()
        query(vector)
        seconds.append(time.perf_counter() - started)
    return pct(seconds)


def unseen(queries: list[SearchQuery], folder: Path) -> list[SearchQuery]:
    """The queries with content no cache holds, each of the same type as before."""
    out = []
    run = uuid.uuid4()  # new content on every run: perception and feature caches persist
    suffix = f" {run.hex[:6]}"
    for i, q in enumerate(queries):
        if q.image is None:
            out.append(replace(q, text=q.text + suffix))
            continue
        with Image.open(q.image) as image:
            image = image.convert("RGB")
        pixel = image.getpixel((0, 0))
        image.putpixel((0, 0), ((pixel[0] + 1 + run.int % 255) % 256, pixel[1], pixel[2]))
        path = folder / f"unseen_{i}.png"
        image.save(path)
        out.append(replace(q, image=path))
    return out


def batches(searcher, queries, sizes) -> dict[int, float]:
    out = {}
    for size in sizes:
        started = time.perf_counter()
        for start in range(0, len(queries), size):
            searcher.search_many(queries[start : start + size], 10)
        out[size] = round(len(queries) / (time.perf_counter() - started), 1)
    return out


def multipart(fields: dict[str, str], image: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"'
        f"\r\nContent-Type: image/png\r\n\r\n".encode()
        + image.read_bytes()
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def page(data: Path, texts: list[str], images: list[tuple[str, Path]]) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "rar_pipeline.cli", "serve", "--port", str(port), "--data",
         str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        ready = time.perf_counter() - started
        get, post = [], []
        for text in texts:
            t0 = time.perf_counter()
            urllib.request.urlopen(
                f"{url}/api/search?" + urllib.parse.urlencode({"q": text})
            ).read()
            get.append(time.perf_counter() - t0)
        for text, image in images:
            body, boundary = multipart({"q": text, "config": "full", "k": "10"}, image)
            request = urllib.request.Request(
                f"{url}/", data=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )  # fmt: skip
            t0 = time.perf_counter()
            urllib.request.urlopen(request).read()
            post.append(time.perf_counter() - t0)
        return {"startup_s": round(ready, 1), "get_api_text": pct(get),
                "post_page_with_upload": pct(post), "requests": len(get) + len(post)}  # fmt: skip
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--config", default="full")
    parser.add_argument("--limit", type=int, default=300, help="test queries used")
    parser.add_argument("--skip-page", action="store_true")
    args = parser.parse_args()

    settings = load_settings(data_root=args.data)
    paths = ArtifactLayout(settings.artifacts_dir)
    tasks = sorted(p.stem for p in paths.enhanced_queries("x").parent.glob("*.parquet"))
    rows = load_test_queries(paths, tasks).sample(frac=1.0, random_state=0).head(args.limit)
    queries = [
        SearchQuery(r.txt if isinstance(r.txt, str) else None,
                    settings.data_root / r.img_path if isinstance(r.img_path, str) else None)
        for r in rows.itertuples()
    ]  # fmt: skip
    started = time.perf_counter()
    searchers = Searchers.from_settings(settings)
    searcher = searchers.get(args.config)
    searcher.search(queries[0])  # loads the VLM and the caches
    report: dict = {
        "corpus": str(settings.data_root),
        "config": args.config,
        "index_rows": searcher.rows,
        "queries": len(queries),
        "open_s": round(time.perf_counter() - started, 2),
        "cpus": os.cpu_count(),
    }
    report["bare_lancedb"] = bare(searcher, queries)
    report["seen"] = per_query(searcher, queries)
    report["seen_search_over_bare_p50"] = round(
        report["seen"]["search"]["p50_ms"] / report["bare_lancedb"]["p50_ms"], 2
    )
    report["hybrid"] = per_query(searcher, queries, hybrid=True)
    with tempfile.TemporaryDirectory() as tmp:
        seen_enhancer = searcher.enhancer
        searcher.enhancer = QueryEnhancer(
            lambda: seen_enhancer.vlm, Path(tmp) / "cache.sqlite", seen_enhancer.options
        )
        report["miss"] = per_query(searcher, queries)
        report["unseen"] = per_query(searcher, unseen(queries, Path(tmp)))
        searcher.enhancer = seen_enhancer
    report["batch_qps"] = batches(searcher, queries, [1, 8, 32, 128])
    if not args.skip_page:
        texts = [q.text for q in queries if q.text and q.image is None][:100]
        images = [(q.text or "", q.image) for q in queries if q.image is not None][:100]
        report["page"] = page(settings.data_root, texts, images)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
