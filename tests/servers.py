"""Servers tests start as their own processes: a free port, a session of their own with
default signal handlers, a wait until they answer, and a stop of the whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_signals() -> None:
    """In the child: SIGINT and SIGTERM back to their defaults (a process started from a
    non-interactive shell inherits them ignored, and then never stops)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def server_process(
    command: Sequence[str],
    ready: Callable[[], bool],
    *,
    env: dict[str, str],
    log: Path,
    cwd: Path | None = None,
    start_timeout: float = 240,
    stop_timeout: float = 60,
) -> Iterator[subprocess.Popen]:
    """Start `command` in its own session; yield once `ready()` holds; stop its group.

    Raises:
        RuntimeError: it exited or did not become ready in time (with its log's tail), or
            left processes behind after SIGTERM.
    """
    with open(log, "wb") as out:
        process = subprocess.Popen(
            list(command), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=default_signals,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + start_timeout
            while not _ready(ready):
                if process.poll() is not None or time.monotonic() > deadline:
                    out.flush()
                    raise RuntimeError(f"{command[0]} did not start:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise RuntimeError(f"{command[0]} ignored SIGTERM") from None
    # the whole group goes: a server's own children (workers, code servers) too
    deadline = time.monotonic() + stop_timeout
    while group_alive(process.pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{command[0]} left processes behind")
        time.sleep(0.5)


def _ready(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except (OSError, AssertionError):
        return False
