"""Shared fixtures: no network, a hand-written corpus, a small demo corpus built once."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
MINI = FIXTURES / "mbeir_mini"


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
