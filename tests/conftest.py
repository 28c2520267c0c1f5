"""Shared fixtures: no network, a hand-written corpus, a small demo corpus built once."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from tests.projects import TINY_DEMO, point_at_project

FIXTURES = Path(__file__).parent / "fixtures"
MINI = FIXTURES / "mbeir_mini"


# The longest test files start first, so that `make test`'s workers end together
# (pytest-xdist hands out files in collection order with `--no-loadscope-reorder`, which
# the Makefile passes; by default it would start the files with the most tests first).
FIRST = (
    "tests/stack/test_cluster_run.py",
    "tests/defs/test_server_backfill.py",
    "tests/stack/test_cluster_backfill.py",
    "tests/stack/test_worker_loss.py",
    "tests/stack/test_faults.py",
    "tests/test_refresh.py",
    "tests/test_namespace.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(FIRST)))


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may talk to servers on this machine only; anything else is a bug."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address):  # type: ignore[no-untyped-def]
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (
            host in {"localhost", "::1"} or host.startswith("127.") or host.startswith("/")
        ):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def mini_corpus(tmp_path: Path) -> Path:
    """A writable copy of the hand-written M-BEIR corpus with every kind of bad row."""
    target = tmp_path / "mbeir_mini"
    shutil.copytree(MINI, target)
    return target


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapeshop demo corpus, built once per test session."""
    from rar_pipeline.core.demo.builder import DemoConfig, build_demo_corpus

    root = tmp_path_factory.mktemp("demo") / "demo"
    build_demo_corpus(
        root,
        DemoConfig(
            n_train_products=60,
            n_test_products=40,
            train_queries_per_task=30,
            test_queries_per_task=15,
        ),
    )
    return root


@dataclass(frozen=True)
class DemoProject:
    """A project folder after `rar demo`, and what the command printed."""

    root: Path
    exit_code: int
    output: str

    @property
    def data(self) -> Path:
        return self.root / "data" / "demo"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts" / "demo"


def _run_tiny_demo(root: Path) -> DemoProject:
    from rar_pipeline.cli import main

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out):
        point_at_project(patch, root)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        code = main(TINY_DEMO)
    return DemoProject(root, code, out.getvalue())


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> DemoProject:
    """A project after a tiny `rar demo`, run once per session (tests only read it).

    Under pytest-xdist the workers share one: the first builds it under the session's
    temp folder while the others wait on a lock (xdist's recipe for once-only fixtures).
    """
    if worker_id == "master":
        return _run_tiny_demo(tmp_path_factory.mktemp("demo_project"))
    shared = tmp_path_factory.getbasetemp().parent  # this session's, common to its workers
    root, done = shared / "demo_project", shared / "demo_project.json"
    with FileLock(str(shared / "demo_project.lock")):
        if not done.is_file():
            root.mkdir()
            project = _run_tiny_demo(root)
            done.write_text(json.dumps({"exit_code": project.exit_code, "output": project.output}))
    built = json.loads(done.read_text())
    return DemoProject(root, built["exit_code"], built["output"])


def require_server(program: str) -> None:
    """Skip a test whose server is not installed, unless CI requires every server."""
    from rar_pipeline.stack.servers import find_program

    try:
        find_program(program)
    except FileNotFoundError as exc:
        if os.environ.get("RAR_REQUIRE_SERVERS"):
            pytest.fail(f"{exc} (.ci/run installs it)")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A throwaway PostgreSQL server on a free 127.0.0.1 port, for this test worker."""
    from rar_pipeline.stack.servers import postgres

    require_server("initdb")
    with postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def new_database(postgres_server, request: pytest.FixtureRequest):
    """`new_database(name)`: the URL of a database of this test's own, on the session's
    PostgreSQL server (tests on one server never see each other's rows)."""
    test = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    return lambda name: postgres_server.create_database(f"{name}_{test}")


@pytest.fixture
def postgres_url(new_database) -> str:
    """A database of this test's own on the session's PostgreSQL server."""
    return new_database("t")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server on a free 127.0.0.1 port, for this test worker."""
    from rar_pipeline.stack.servers import redis

    require_server("redis-server")
    with redis(tmp_path_factory.mktemp("redis")) as url:
        yield url
