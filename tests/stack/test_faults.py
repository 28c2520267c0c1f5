"""A server that fails in the middle of a captioning step loses nothing.

Real processes, each a process group of its own on a free 127.0.0.1 port: PostgreSQL (the
Dagster instance and the shared cache), Redis, SeaweedFS (the data root and the
artifacts), a `rar worker`, and a chat-completions server standing in for the VLM fleet
(the `openai` backend) that answers after a fixed delay. At the VLM's third request, the
test makes a server fail: PostgreSQL is restarted (every connection cut), or SeaweedFS
stops answering for ten seconds (its processes stopped, so requests hang as on a lost
network). The step rides it out (the cache store reconnects, each S3 request is tried up
to 10 times): the run succeeds, every candidate is captioned exactly once, each image went
to the VLM once, and a rerun is all cache hits. A run that failed would have its messages
shown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.mirror import filesystem_for, upload_tree
from rar_pipeline.stack.servers import ObjectStore, Postgres, postgres, redis, seaweedfs
from tests.conftest import MINI, require_server
from tests.core.enhance.vlm.test_openai_backend import Reply, ScriptedServer, completion
from tests.stack.conftest import Deployment, worker

pytestmark = pytest.mark.slow

SHARD = "mbeir_mini_task0_cand_pool"
OUTAGE_S = 10


@dataclass(frozen=True)
class Cluster:
    deployment: Deployment
    database: Postgres
    store: ObjectStore
    vlm: ScriptedServer


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The servers, a worker on every queue, and a VLM server that answers in 0.3 s."""
    for program in ("initdb", "redis-server", "weed"):
        require_server(program)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml", home)
    with contextlib.ExitStack() as running:
        database = running.enter_context(postgres(tmp_path / "postgres"))
        broker = running.enter_context(redis(tmp_path / "redis"))
        store = running.enter_context(seaweedfs(tmp_path / "seaweedfs"))
        upload_tree(MINI, store.filesystem(), filesystem_for(store.uri("data/mbeir_mini"))[1])
        vlm = running.enter_context(ScriptedServer())
        env = {
            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
            "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_URL": database.create_database("dagster").replace(
                "postgresql://", "postgresql+psycopg2://"),
            "RAR_CELERY_BROKER_URL": broker,
            "RAR_PROJECT_DIR": str(tmp_path / "project"),
            "RAR_DATA_ROOT": store.uri("data/mbeir_mini"),
            "RAR_ARTIFACTS_DIR": store.uri("artifacts/mbeir_mini"),
            "RAR_CACHE_URL": database.create_database("cache"),
            "RAR_WORK_DIR": str(tmp_path / "run-host"),
            **vlm.openai_settings(),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            **store.credentials,
        }  # fmt: skip
        (tmp_path / "project").mkdir()
        deployment = Deployment(env, tmp_path)
        own = Deployment({**env, "RAR_WORK_DIR": str(tmp_path / "worker-one" / "tmp")}, tmp_path)
        running.enter_context(worker(own, "one", "vlm", "default"))
        yield Cluster(deployment, database, store, vlm)


def _fail_at_third_request(cluster: Cluster, fault: Callable[[], None]) -> list[int]:
    """The VLM server calls `fault` when its third request arrives; returns when it did."""
    happened: list[int] = []

    def answer(seen, attempt: int) -> Reply:
        if attempt == 3 and not happened:
            happened.append(attempt)
            fault()
        return Reply(body=completion("a red circle on a white background"), delay_s=0.3)

    cluster.vlm.respond = answer
    return happened


def _failures(deployment: Deployment, run_id: str) -> str:
    """What a run's failed steps and the run itself said, one message a line."""
    with deployment.instance() as instance:
        messages = [
            record.dagster_event.message or ""
            for record in instance.all_logs(run_id)
            if record.dagster_event
            and record.dagster_event.event_type
            in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE)
        ]
    return "\n".join(messages)


def _caption_through(cluster: Cluster, fault: Callable[[], None]) -> int:
    """Caption SHARD while `fault` strikes, then again; the VLM requests the first made."""
    deployment = cluster.deployment
    happened = _fail_at_third_request(cluster, fault)
    first = deployment.run("candidate_pool:*", f"corpus_captions:{SHARD}", check=False)
    assert happened, "the step ended before the fault"
    said = [_failures(deployment, r["run_id"]) for r in first if not r["success"]]
    assert not said, said  # the step rode the fault out
    calls = cluster.vlm.attempts
    deployment.run(f"corpus_captions:{SHARD}")
    assert cluster.vlm.attempts == calls  # the rerun: every caption from the cache
    return calls


def _captions_complete(cluster: Cluster) -> pd.DataFrame:
    """Every candidate of the shard's pool captioned exactly once (read from the bucket);
    returns the pool."""
    fs = cluster.store.filesystem()
    local = cluster.deployment.root / "check"
    layout = ArtifactLayout(local)
    for table in (layout.captions(SHARD), layout.pool(SHARD)):
        remote = filesystem_for(
            cluster.store.uri("artifacts/mbeir_mini/" + table.relative_to(local).as_posix())
        )[1]
        table.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(remote) as source:
            table.write_bytes(source.read())
    captions = pd.read_parquet(layout.captions(SHARD))
    pool = pd.read_parquet(layout.pool(SHARD))
    assert captions["did"].is_unique and sorted(captions["did"]) == sorted(pool["did"])
    return pool


def _images(pool: pd.DataFrame) -> int:
    return pool["img_path"].dropna().nunique()


def test_postgresql_restarted_mid_step_is_ridden_out_and_nothing_is_lost(cluster: Cluster):
    calls = _caption_through(cluster, cluster.database.restart)
    # each image went to the VLM once: what it answered before the restart was kept
    assert calls == _images(_captions_complete(cluster))


def _weed_processes(store: ObjectStore) -> list[int]:
    port = store.endpoint_url.rsplit(":", 1)[1]
    out = subprocess.run(["pgrep", "-f", f"s3.port={port} "], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_object_storage_unreachable_for_ten_seconds_is_ridden_out_and_nothing_is_lost(
    cluster: Cluster,
):
    [weed] = _weed_processes(cluster.store)

    def outage() -> None:  # from the third caption on, through the step's upload
        os.killpg(weed, signal.SIGSTOP)
        threading.Timer(OUTAGE_S, os.killpg, (weed, signal.SIGCONT)).start()

    calls = _caption_through(cluster, outage)
    assert calls == _images(_captions_complete(cluster))
