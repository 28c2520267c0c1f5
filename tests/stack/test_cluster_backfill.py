"""A prompt edit, then a backfill launched through the webserver, on the cluster deployment.

Real processes: the Dagster instance in PostgreSQL, Redis, the cache in PostgreSQL, two
`rar worker`s on the `vlm` queue and one on `default` (each in an empty folder of its
own), the Dagster webserver and daemon, and a chat-completions server standing in for the
VLM fleet. The corpus' pools overlap, as M-BEIR's union pool holds the local pools'
candidates: every two shards share an image. The workers keep running across the edit of
the prompts file, as they would on a cluster.

After the edit, the captions of exactly the shards that read the edited prompt are stale;
the backfill of those, launched over GraphQL as the UI launches it, spreads them over both
VLM workers, recomputes exactly them (each image goes to the VLM once: what one worker
captioned is a cache hit for the other), and leaves them fresh: the workers recorded the
code versions of the edited prompt, not those they loaded at their first step.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from rar_pipeline.core.enhance import prompts
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.stack.deployment import start_dagster
from rar_pipeline.stack.processes import free_port
from tests.core.enhance.vlm.test_openai_backend import Reply, ScriptedServer, completion
from tests.defs.test_server_backfill import (
    BACKFILL_STATUS,
    LAUNCH_BACKFILL,
    STALE_BY_PARTITION,
    GraphQL,
)
from tests.stack.conftest import Deployment, worker

pytestmark = pytest.mark.slow

NAMESPACE = "mbeir_mini"
CAPTIONS = {"path": [NAMESPACE, "corpus_captions"]}


def overlap_the_pools(corpus: Path) -> None:
    """Task 6's pool gets an image of its own; the union pool holds every local pool's rows."""
    pools = corpus / "cand_pool"
    union = next((pools / "global").glob("*.jsonl"))
    rows: dict[str, str] = {}
    for path in [union, *sorted((pools / "local").glob("*.jsonl"))]:
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                rows.setdefault(json.loads(line)["did"], line)  # the bad rows stay out
    task6 = pools / "local" / "mbeir_mini_task6_cand_pool.jsonl"
    task6.write_text(task6.read_text() + rows["77:100"] + "\n")  # the union's own image
    union.write_text("".join(f"{line}\n" for line in rows.values()))


def hold_the_first_request_until_a_second_step_asks(vlm: ScriptedServer) -> None:
    """The next request waits (up to 90 s, below the VLM client's timeout) until another
    arrives: with one request in flight per step, the other comes from a second step, which
    must then be on the other worker. The two shards' steps overlap, as a fleet's do. (A
    run slot may still be held by the drift sensor's checks, launched at the daemon's
    start: the second shard's run then starts when they end.)"""
    first, second = vlm.attempts + 1, threading.Event()

    def answer(seen, attempt: int) -> Reply:
        if attempt == first:
            second.wait(timeout=90)
        else:
            second.set()
        return Reply(body=completion("a red circle"), delay_s=0.2)

    vlm.respond = answer


def _captioned_on(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The Celery workers that said they executed the run's captioning step."""
    said = (
        record.dagster_event.event_specific_data.metadata
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    )
    return {str(m["Celery worker"].value) for m in said
            if "Celery worker" in m and m["step_keys"].value == "corpus_captions"}  # fmt: skip


def _wait_for(gql: GraphQL, backfill_id: str, timeout_s: float = 420) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = gql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]["status"]
        if status not in ("REQUESTED", "CANCELING"):
            return status
        time.sleep(2)
    raise AssertionError(f"backfill {backfill_id} still running after {timeout_s} s")


def _stale(gql: GraphQL, partitions: list[str]) -> dict[str, str]:
    answer = gql(STALE_BY_PARTITION, keys=[CAPTIONS], partitions=partitions)
    return dict(zip(partitions, answer["assetNodes"][0]["staleStatusByPartition"], strict=True))


@pytest.mark.slow
def test_a_prompt_edit_backfilled_through_the_webserver_spreads_over_workers_sharing_a_cache(
    deployment: Deployment, new_database, mini_corpus: Path, tmp_path: Path
):
    overlap_the_pools(mini_corpus)
    prompts_file = tmp_path / "prompts.toml"
    prompts_file.write_text("# prompt overrides (none yet)\n")
    port = free_port()
    gql = GraphQL(f"http://127.0.0.1:{port}")
    with contextlib.ExitStack() as running:
        vlm = running.enter_context(ScriptedServer())
        vlm.respond = lambda seen, attempt: Reply(body=completion("a red circle"), delay_s=0.2)
        env = {**deployment.env, **vlm.openai_settings(), "RAR_CACHE_URL": new_database("cache"),
               "RAR_PROMPTS": str(prompts_file)}  # fmt: skip
        deployment = Deployment(env, deployment.root)
        for name, queue in (("a", "vlm"), ("b", "vlm"), ("c", "default")):
            running.enter_context(worker(deployment, name, queue))
        deployment.run("candidate_pool:*", "corpus_captions:*")
        before = vlm.attempts

        system = prompts.PROMPTS["corpus_caption"].system + " Name materials."
        prompts_file.write_text(f"[corpus_caption]\nsystem = {json.dumps(system)}\n")
        start_dagster(running, tmp_path, env, port)  # it loads the edited prompts
        hold_the_first_request_until_a_second_step_asks(vlm)
        shards = sorted(p.stem for p in (mini_corpus / "cand_pool").rglob("*.jsonl"))
        stale = [shard for shard, status in _stale(gql, shards).items() if status == "STALE"]
        params = {"assetSelection": [CAPTIONS], "partitionNames": stale}
        backfill_id = gql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]["backfillId"]
        assert _wait_for(gql, backfill_id) == "COMPLETED_SUCCESS"
        assert set(_stale(gql, shards).values()) == {"FRESH"}  # the versions say what ran

    layout = ArtifactLayout(Path(env["RAR_ARTIFACTS_DIR"]))
    images = {s: set(pd.read_parquet(layout.pool(s))["img_path"].dropna()) for s in shards}
    assert set(stale) == {s for s in shards if images[s]}  # the shards that caption images
    with deployment.instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(stale)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        worker_of = {r.tags["dagster/partition"]: _captioned_on(instance, r.run_id) for r in runs}
        pools = instance.fetch_materializations(
            dg.AssetKey([NAMESPACE, "candidate_pool"]), limit=100
        ).records
    assert all(len(on) == 1 for on in worker_of.values())
    task0, task6, union = shards  # sorted: the union pool's name comes last
    assert worker_of[task0] != worker_of[task6]  # the two first shards: both VLM workers
    # the union's images were all captioned before it ran, some of them on the other worker
    other = task0 if worker_of[union] == worker_of[task6] else task6
    assert images[other] and images[other] <= images[union]
    assert vlm.attempts - before == len(images[union])  # each image went to the VLM once
    assert len(pools) == len(shards)  # nothing upstream was recomputed
