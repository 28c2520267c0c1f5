"""A shard backfill through the real daemon, at run concurrency 1 and 2.

    python benchmarks/backfill_concurrency.py [--data data/demo] [--limits 1 2]

Needs `make demo` first (the graph materialized on the demo). For each limit, a fresh
Dagster instance (the committed dagster.yaml with `max_concurrent_runs` set to the limit)
and `dagster dev` on 127.0.0.1 read the project's artifacts. A new corpus caption prompt
(a different prompts file each time, `RAR_PROMPTS`, so no caption is in the cache) makes
every shard stale,
and a partition backfill of `corpus_captions` over every shard is launched over GraphQL
and timed until it completes. The backfill is one run per shard; each run is its own
process (the run launcher's), so process start-up, imports and model loading are part of
what parallel runs overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rar_pipeline.core.enhance.prompts import PROMPTS  # noqa: E402
from rar_pipeline.defs.namespace import namespace_of  # noqa: E402
from rar_pipeline.stack.processes import default_signals, free_port  # noqa: E402
from tests.defs.test_server_backfill import BACKFILL_STATUS, LAUNCH_BACKFILL, LOCATION, GraphQL  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) { __typename }
}"""


def run_once(limit: int, data: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="backfill-"))
    home = folder / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((PROJECT / "dagster_home" / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = limit
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    prompts = folder / "prompts.toml"
    prompts.write_text("")
    (folder / "workspace.yaml").write_text(
        f"load_from:\n  - python_module:\n      module_name: rar_pipeline.definitions\n"
        f"      location_name: {LOCATION}\n      working_directory: {PROJECT}\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "RAR_PROJECT_DIR": str(PROJECT),
           "RAR_DATA_ROOT": str(data.resolve()), "RAR_PROMPTS": str(prompts)}  # fmt: skip
    namespace = namespace_of(data.resolve().name)
    # the partitions, registered in this instance as `rar run` would
    subprocess.run([sys.executable, "-c", (
        "import dagster as dg; from rar_pipeline.core.corpus.mbeir import discover; "
        "from rar_pipeline.defs.partitions import CorpusPartitions, register_corpus_partitions; "
        f"register_corpus_partitions(dg.DagsterInstance.get(), discover({str(data)!r}), "
        f"CorpusPartitions.in_namespace({namespace!r}))"
    )], env=env, check=True)  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p",
         str(port), "-w", str(folder / "workspace.yaml")],
        env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=default_signals,
    )  # fmt: skip
    gql = GraphQL(f"http://127.0.0.1:{port}")
    try:
        while True:
            try:
                gql("{ version }")
                break
            except OSError:
                time.sleep(1)
        system = PROMPTS["corpus_caption"].system + f" Benchmark {uuid.uuid4().hex[:8]}."
        prompts.write_text(f"[corpus_caption]\nsystem = {json.dumps(system)}\n")
        gql(RELOAD, name=LOCATION)
        started = time.perf_counter()
        key = [namespace, "corpus_captions"]
        params = {"assetSelection": [{"path": key}], "allPartitions": True}
        launched = gql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
        while True:
            status = gql(BACKFILL_STATUS, id=launched["backfillId"])
            status = status["partitionBackfillOrError"].get("status")
            if status not in ("REQUESTED", None):
                break
            time.sleep(1)
        return {
            "limit": limit,
            "status": status,
            "seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--limits", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    results = [run_once(limit, args.data) for limit in args.limits]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
