"""A worker killed with SIGKILL in the middle of a captioning step loses nothing.

Real processes: the Dagster instance in PostgreSQL, Redis, `rar worker`s (`default` and
`vlm`), and a chat-completions server standing in for the VLM fleet that answers after a
fixed delay (the `openai` backend talks to it over HTTP). At the VLM's third request:
- the step's process is killed: Celery hands the step back to the broker at once (the
  executor's `task_reject_on_worker_lost`) and the worker's next process runs it again;
- or the whole worker is (its machine lost): nobody says so, and once the visibility
  timeout has passed another worker takes the step.
Each run ends with every candidate captioned once; a rerun is served from the cache.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator

import pandas as pd
import pytest

from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.stack.processes import server_process
from tests.core.enhance.vlm.test_openai_backend import Reply, ScriptedServer, completion
from tests.stack.conftest import RAR, Deployment

SHARD = "mbeir_mini_task0_cand_pool"
VISIBILITY_S = 15  # RAR_CELERY_VISIBILITY_TIMEOUT_S: the step goes to another worker after


@contextlib.contextmanager
def worker_process(deployment: Deployment, name: str, queue: str) -> Iterator[int]:
    """A `rar worker` on one queue, in its own folder; yields its main process' pid."""
    folder = deployment.root / f"worker-{name}"
    folder.mkdir()
    log = folder / "worker.log"
    with server_process(
        [str(RAR), "worker", "--name", name, f"--queue={queue}"],
        lambda: b" ready." in log.read_bytes(), env=deployment.env, log=log, cwd=folder,
        start_timeout=120,
    ) as process:  # fmt: skip
        yield process.pid


def _pool_processes(main_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(main_pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


@pytest.fixture
def vlm_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.mark.slow
def test_a_step_whose_worker_process_is_killed_runs_again_and_loses_nothing(
    deployment: Deployment, vlm_server: ScriptedServer
):
    deployment = Deployment({**deployment.env, **vlm_server.openai_settings()}, deployment.root)
    killed: list[int] = []
    with (
        worker_process(deployment, "default", "default"),
        worker_process(deployment, "vlm", "vlm") as vlm_worker,
    ):

        def answer(seen, attempt: int) -> Reply:
            if attempt == 3 and not killed:  # the step is mid-way: kill its process
                [child] = _pool_processes(vlm_worker)
                killed.append(child)
                os.kill(child, signal.SIGKILL)
            return Reply(body=completion("a red circle on a white background"), delay_s=0.3)

        vlm_server.respond = answer
        first = deployment.run("candidate_pool:*", f"corpus_captions:{SHARD}")
        calls = vlm_server.attempts
        again = deployment.run(f"corpus_captions:{SHARD}")
    assert killed, "the step ended before its process could be killed"
    assert all(r["success"] for r in first + again)
    assert vlm_server.attempts == calls  # the rerun: every caption from the cache
    _every_candidate_captioned_once(deployment)


def _every_candidate_captioned_once(deployment: Deployment) -> None:
    paths = ArtifactLayout(deployment.root / "artifacts")
    captions = pd.read_parquet(paths.captions(SHARD))
    pool = pd.read_parquet(paths.pool(SHARD))
    assert captions["did"].is_unique and sorted(captions["did"]) == sorted(pool["did"])


@pytest.mark.slow
def test_a_step_whose_whole_worker_is_lost_goes_to_another_worker_after_the_timeout(
    deployment: Deployment, vlm_server: ScriptedServer
):
    settings = {**vlm_server.openai_settings(),
                "RAR_CELERY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S)}  # fmt: skip
    deployment = Deployment({**deployment.env, **settings}, deployment.root)
    lost = threading.Event()
    with (
        worker_process(deployment, "default", "default"),
        concurrent.futures.ThreadPoolExecutor(1) as background,
    ):
        with worker_process(deployment, "lost", "vlm") as doomed:

            def answer(seen, attempt: int) -> Reply:
                if attempt == 3 and not lost.is_set():  # mid-step: the machine goes
                    os.killpg(doomed, signal.SIGKILL)
                    lost.set()
                return Reply(body=completion("a red circle on a white background"), delay_s=0.3)

            vlm_server.respond = answer
            first = background.submit(
                deployment.run, "candidate_pool:*", f"corpus_captions:{SHARD}"
            )
            assert lost.wait(timeout=300), "the step ended before its worker could be killed"
        with worker_process(deployment, "replacement", "vlm"):
            runs = first.result(timeout=600)
            calls = vlm_server.attempts
            again = deployment.run(f"corpus_captions:{SHARD}")
    assert all(r["success"] for r in runs + again)
    assert vlm_server.attempts == calls  # the rerun: every caption from the cache
    _every_candidate_captioned_once(deployment)
