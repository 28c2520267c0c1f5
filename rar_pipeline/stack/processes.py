"""Servers started as processes of our own, stopped by process group.

Each gets a free port, a session of its own with default signal handlers, a wait until it
answers, and on the way out a stop of its whole process group.

The local stack (`stack.servers`) and the tests' server fixtures both use them.
"""

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
    """In the child: SIGINT and SIGTERM back to their defaults.

    A process started from a non-interactive shell inherits them ignored, and never stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still there."""
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
    user: str | None = None,
    start_timeout: float = 240,
    stop_timeout: float = 60,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Iterator[subprocess.Popen]:
    """Start `command` in its own session; yield once `ready()` holds; stop its group.

    Args:
        command: the server's command line.
        ready: answers True once the server serves (an OSError or AssertionError: not yet).
        env: its environment.
        log: where its output goes.
        cwd: its working folder.
        user: run it as this user (PostgreSQL refuses to run as root).
        stop_signal: what asks it to stop (PostgreSQL's fast shutdown is SIGINT); SIGKILL
            follows after `stop_timeout`.
        start_timeout: seconds to become ready.
        stop_timeout: seconds to stop, for its group to be gone.

    Raises:
        RuntimeError: it exited or did not become ready in time (with its log's tail), or
            left processes behind after SIGTERM.
    """
    with open(log, "wb") as out:
        process = subprocess.Popen(
            list(command), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=default_signals, user=user,
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
            with contextlib.suppress(ProcessLookupError):  # it may have exited already
                os.killpg(process.pid, stop_signal)
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise RuntimeError(f"{command[0]} ignored {stop_signal.name}") from None
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
