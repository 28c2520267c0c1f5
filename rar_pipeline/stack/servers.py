"""Real servers on 127.0.0.1 for the local stack and the tests: PostgreSQL and Redis.

Each is a context manager that starts the server as a process group of its own on a free
loopback port, yields once it answers, and stops the whole group on the way out (also when
the body raises). They are throwaway instances: PostgreSQL trusts local connections and
skips fsync, Redis keeps nothing on disk. They exist to try and test the cluster
deployment on one machine (docs/scaling.md), not to run it in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rar_pipeline.stack.processes import free_port, server_process

POSTGRES_USER = "rar"


def find_program(name: str) -> str:
    """A PostgreSQL server program (`initdb`, `postgres`): on PATH, or Debian's newest.

    Raises:
        FileNotFoundError: PostgreSQL is not installed (`apt-get install postgresql`).
    """
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise FileNotFoundError(
            f"{name} not found: install PostgreSQL (apt-get install postgresql)"
        )
    return found


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server: its port, and URLs to its databases."""

    port: int

    def url(self, database: str = "postgres", driver: str = "") -> str:
        """`postgresql://rar@127.0.0.1:PORT/database` (`driver`: `psycopg2` adds `+psycopg2`)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name` if it does not exist; returns its URL."""
        import psycopg2

        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _answers(port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}/postgres").close()
    except psycopg2.OperationalError:  # not listening yet, or still starting up
        return False
    return True


@contextlib.contextmanager
def postgres(log_dir: Path, *, port: int | None = None) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (TCP only, trust auth, no fsync).

    PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user
    and lives in a private temp folder it can reach; otherwise it runs as the caller.
    The cluster's folder is removed when the server stops.
    """
    port = port or free_port()
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="rar-postgres-"))
    data = folder / "data"
    if user:
        shutil.chown(folder, user=user)
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [find_program("initdb"), "-D", str(data), "-U", POSTGRES_USER, "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, user=user,
        )  # fmt: skip
        command = [
            find_program("postgres"), "-D", str(data), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "fsync=off", "-c", "max_connections=200",
        ]  # fmt: skip
        with server_process(
            command, lambda: _answers(port), env=dict(os.environ), log=log_dir / "postgres.log",
            user=user, start_timeout=60, stop_signal=signal.SIGINT,
        ):  # fmt: skip
            yield Postgres(port)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def redis(folder: Path, *, port: int | None = None) -> Iterator[str]:
    """A Redis server on 127.0.0.1 that keeps nothing on disk; yields its `redis://` URL."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        find_program("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
        "--protected-mode", "yes", "--save", "", "--appendonly", "no", "--dir", str(folder),
    ]  # fmt: skip
    with server_process(
        command, lambda: _pong(port), env=dict(os.environ), log=folder / "redis.log",
        start_timeout=30,
    ):  # fmt: skip
        yield f"redis://127.0.0.1:{port}/0"
