"""Issue 19's probe of `rar serve`, replayed against a real server on a copy of the demo:
each request ends in its status, the server answers a normal query right after each, and
its memory stays bounded throughout.

Before the fixes: thin images took the server to 21.8 GB and the kernel killed it, a 2 GB
chunked upload was spooled to disk, another site's page could post, a damaged table gave
a plain-text 500, quoted hybrid queries failed, hybrid came back short, an absurd k was a
traceback (CLI), a checkpoint without its manifest was served as untrained, and abandoned
requests kept their place in the queue.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request

import pytest

from rar_pipeline.stack.processes import free_port, server_process
from tests.projects import PROJECT_VARS
from tests.web.hostile import NORMAL, PROBES, peak_rss_mb, search

MEMORY_BUDGET_MB = 2048


@pytest.fixture(scope="module")
def served(demo_project, tmp_path_factory):
    """`rar serve` over a copy of the demo project (the probes damage it)."""
    root = tmp_path_factory.mktemp("hostile") / "project"
    shutil.copytree(demo_project.root, root, ignore=shutil.ignore_patterns("dagster_home"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS}
    env |= {"RAR_PROJECT_DIR": str(root), "HF_HUB_OFFLINE": "1",
            "DAGSTER_HOME": str(root / "dagster_home")}  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status == 200

    command = [sys.executable, "-m", "rar_pipeline.cli", "serve", "--port", str(port)]
    log = root.parent / "serve.log"
    with server_process(command, ready, env=env, log=log, start_timeout=180) as process:
        yield url, root, process


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PROBES))
def test_each_probe_is_answered_and_the_server_carries_on(served, name):
    url, root, process = served
    probe, expected = PROBES[name]
    assert probe(url, root) == expected
    status, answer = search(url, **NORMAL)
    assert status == 200 and len(answer["hits"]) == 5, answer
    assert peak_rss_mb(process.pid) < MEMORY_BUDGET_MB
