"""Captions per second on the cluster deployment with 1, 2 and 4 `vlm` workers.

A generated corpus of SHARDS pools of IMAGES distinct images each; the `openai` backend
against a chat-completions server on 127.0.0.1 that answers every request after a fixed
latency (the VLM fleet stands in for itself: only the latency matters), one request in
flight per step (`RAR_VLM_OPENAI_MAX_CONCURRENCY=1`), so a worker captions at most
1/latency images per second and N workers at most N/latency.

For each N: a fresh Dagster instance and cache in PostgreSQL, Redis, N `rar worker`s on
the `vlm` queue and one on `default`; the pools are materialized first (not timed), then
the captions of every shard are launched at once, a run per shard, as
`python -m rar_pipeline.stack.graph corpus_captions:<shard>` processes. Reported: the
wall time from the launch to the last run's end, and the captions per second between the
VLM server's first and last request (what the workers sustain once the runs are up).

    .venv/bin/python benchmarks/worker_throughput.py [--workers 1 2 4] [--shards 8]
        [--images 25] [--latency 0.25]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from rar_pipeline.stack.servers import postgres, redis  # noqa: E402
from tests.core.enhance.vlm.test_openai_backend import (  # noqa: E402
    Reply,
    ScriptedServer,
    completion,
)
from tests.stack.conftest import Deployment, worker  # noqa: E402


def make_corpus(root: Path, shards: int, images: int) -> list[str]:
    """SHARDS local pools of IMAGES distinct images (M-BEIR layout); the shard names."""
    pools, pictures = root / "cand_pool" / "local", root / "mbeir_images" / "bench"
    pools.mkdir(parents=True)
    pictures.mkdir(parents=True)
    names = []
    for s in range(shards):
        rows = []
        for i in range(images):
            n = s * images + i
            path = pictures / f"{n}.png"
            Image.new("RGB", (48, 48), (n % 256, (n // 256) % 256, 128)).save(path)
            rows.append({"did": f"9:{n}", "img_path": f"mbeir_images/bench/{n}.png",
                         "modality": "image", "txt": None})  # fmt: skip
        name = f"mbeir_bench_task{s}_cand_pool"
        (pools / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        names.append(name)
    queries = root / "query" / "test"  # a corpus has queries: one, for the layout's sake
    queries.mkdir(parents=True)
    query = {"qid": "9:0", "query_txt": "a coloured square", "query_img_path": None,
             "query_modality": "text", "pos_cand_list": ["9:0"], "task_id": 0}  # fmt: skip
    (queries / "mbeir_bench_task0_test.jsonl").write_text(json.dumps(query) + "\n")
    return names


def measure(tmp: Path, corpus: Path, shards: list[str], workers: int, latency: float) -> dict:
    vlm = ScriptedServer()
    stamps: list[float] = []

    def answer(seen, attempt: int) -> Reply:
        stamps.append(time.monotonic())
        return Reply(body=completion("a coloured square"), delay_s=latency)

    vlm.respond = answer
    home = tmp / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home)
    with contextlib.ExitStack() as running:
        running.enter_context(vlm)
        database = running.enter_context(postgres(tmp / "postgres"))
        broker = running.enter_context(redis(tmp / "redis"))
        env = {
            "PATH": os.environ["PATH"], "HOME": str(tmp), "LANG": "C.UTF-8",
            "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_URL": database.create_database("dagster").replace(
                "postgresql://", "postgresql+psycopg2://"),
            "RAR_CELERY_BROKER_URL": broker, "RAR_PROJECT_DIR": str(tmp),
            "RAR_DATA_ROOT": str(corpus), "RAR_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "RAR_CACHE_URL": database.create_database("cache"),
            **vlm.openai_settings(),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        }  # fmt: skip
        deployment = Deployment(env, tmp)
        running.enter_context(worker(deployment, "default", "default"))
        for n in range(workers):
            running.enter_context(worker(deployment, f"vlm{n}", "vlm"))
        deployment.run("candidate_pool:*")
        started = time.monotonic()
        launched = [
            subprocess.Popen([sys.executable, "-m", "rar_pipeline.stack.graph",
                              f"corpus_captions:{shard}"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for shard in shards
        ]  # fmt: skip
        outcomes = [json.loads(p.communicate()[0].splitlines()[-1]) for p in launched]
        wall = time.monotonic() - started
    assert all(o["success"] for o in outcomes), outcomes
    captions = len(stamps)
    span = stamps[-1] - stamps[0] + latency
    return {"workers": workers, "captions": captions, "wall_s": round(wall, 1),
            "captions_per_s": round(captions / span, 2),
            "ideal_per_s": round(workers / latency, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--images", type=int, default=25)
    parser.add_argument("--latency", type=float, default=0.25)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="throughput-"))
    corpus = base / "bench"
    shards = make_corpus(corpus, args.shards, args.images)
    rows = [measure(base / f"w{n}", corpus, shards, n, args.latency) for n in args.workers]
    one = rows[0]["captions_per_s"] / rows[0]["workers"]
    print("| vlm workers | captions | wall (launch to last run) | captions/s | ideal | "
          "vs linear from the first |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['captions']} | {r['wall_s']} s | {r['captions_per_s']} | "
            f"{r['ideal_per_s']} | {r['captions_per_s'] / (one * r['workers']):.0%} |"
        )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
