"""The local stack: the cluster deployment's servers and workers, on this machine, throwaway.

`stack(folder)` starts, each as a process group of its own on a free 127.0.0.1 port:
PostgreSQL (the Dagster instance, the shared cache, MLflow's store), Redis (Celery's
broker), SeaweedFS (S3: the data root, the artifacts, LanceDB, MLflow's artifacts), an
MLflow server, the Dagster webserver and daemon on `deploy/dagster.yaml`, and N
`rar worker`s, each in an empty folder of its own with its own temporary folder, so that a
step that depended on this machine's disk would fail. Everything it writes is under
`folder`; leaving the context stops every process group, also when the body raised.

`Stack.env` is the deployment's environment: the same variables on every process (the
settings a cluster sets, docs/scaling.md). `rar stack up` writes it to `<folder>/env`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rar_pipeline.core.settings import knob
from rar_pipeline.defs.workloads import QUEUE_NAMES
from rar_pipeline.stack.processes import free_port, server_process
from rar_pipeline.stack.servers import ObjectStore, mlflow_server, postgres, redis, seaweedfs


@dataclass(frozen=True)
class Stack:
    """A running stack: the deployment's environment and where to reach it."""

    folder: Path
    env: dict[str, str]
    store: ObjectStore
    data_root: str
    artifacts_dir: str
    webserver_url: str
    mlflow_url: str
    workers: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """What a person needs to use the stack."""
        return "\n".join([
            f"Dagster UI   {self.webserver_url}",
            f"MLflow       {self.mlflow_url}",
            f"S3           {self.store.endpoint_url} (bucket {self.store.bucket})",
            f"workers      {', '.join(self.workers)}",
            f"environment  {self.folder / 'env'} (source it to run rar against the stack)",
        ])  # fmt: skip

    def write_env(self) -> Path:
        path = self.folder / "env"
        path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items()))
        return path


def settings_env(**values: str) -> dict[str, str]:
    """Settings by field name as the environment variables every process reads."""
    return {knob(name).env: value for name, value in values.items()}


def _sqlalchemy(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


BIN = Path(sys.executable).parent  # this environment's programs


def start_dagster(
    running: contextlib.ExitStack, folder: Path, env: dict[str, str], port: int
) -> None:
    """The Dagster webserver (on `port`) and daemon, each in its own folder under `folder`."""
    for name, command, ready in (
        ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                       "-m", "rar_pipeline.definitions"],
         lambda: _answers(f"http://127.0.0.1:{port}/server_info")),
        ("daemon", [str(BIN / "dagster-daemon"), "run", "-m", "rar_pipeline.definitions"],
         lambda: b"daemon" in (folder / "daemon" / "daemon.log").read_bytes().lower()),
    ):  # fmt: skip
        (folder / name).mkdir(exist_ok=True)
        own = {**env, **settings_env(work_dir=str(folder / name / "tmp"))}
        running.enter_context(server_process(
            command, ready, env=own, log=folder / name / f"{name}.log", cwd=folder / name,
            start_timeout=180))  # fmt: skip


def _start_workers(
    running: contextlib.ExitStack, folder: Path, env: dict[str, str], workers: int
) -> list[str]:
    """`workers` `rar worker`s on every queue, each in an empty folder of its own."""
    names = []
    for i in range(1, workers + 1):
        name, place = f"worker{i}", folder / f"worker{i}"
        place.mkdir(exist_ok=True)
        log = place / "worker.log"
        running.enter_context(server_process(
            [str(BIN / "rar"), "worker", "--name", name, *(f"--queue={q}" for q in QUEUE_NAMES)],
            lambda log=log: b" ready." in log.read_bytes(),
            env={**env, **settings_env(work_dir=str(place / "tmp"))}, log=log, cwd=place,
            start_timeout=180))  # fmt: skip
        names.append(name)
    return names


@contextlib.contextmanager
def stack(
    folder: Path,
    instance_yaml: Path,
    *,
    workers: int = 2,
    corpus: str = "demo",
    webserver_port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start the stack under `folder` (see the module); yields it running.

    Args:
        folder: where every server and worker keeps its files (created).
        instance_yaml: the deployment's Dagster instance (`deploy/dagster.yaml`).
        workers: how many `rar worker`s, each on every queue.
        corpus: the data root's name in the bucket (`s3://rar/data/<corpus>`).
        webserver_port: the Dagster webserver's port (default: a free one).
        extra_env: more settings for every process (`RAR_EPOCHS`...).
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as running:
        database = running.enter_context(postgres(folder / "postgres"))
        broker = running.enter_context(redis(folder / "redis"))
        store = running.enter_context(seaweedfs(folder / "seaweedfs"))
        tracking = running.enter_context(mlflow_server(
            folder / "mlflow", _sqlalchemy(database.create_database("mlflow")), store))  # fmt: skip
        home = folder / "dagster_home"
        home.mkdir(exist_ok=True)
        shutil.copy(instance_yaml, home / "dagster.yaml")
        env = {
            "PATH": os.defpath, "LANG": "C.UTF-8",
            "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_URL": _sqlalchemy(database.create_database("dagster")),
            **settings_env(
                celery_broker_url=broker,
                cache_url=database.create_database("cache"),
                data_root=store.uri(f"data/{corpus}"),  # as `Stack.data_root`
                artifacts_dir=store.uri(f"artifacts/{corpus}"),
                project_dir=str(folder / "project"),
                mlflow_tracking_uri=tracking,
            ),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            **store.credentials, **(extra_env or {}),
        }  # fmt: skip
        (folder / "project").mkdir(exist_ok=True)
        port = webserver_port or free_port()
        start_dagster(running, folder, env, port)
        names = _start_workers(running, folder, env, workers)
        running_stack = Stack(
            folder,
            env,
            store,
            store.uri(f"data/{corpus}"),
            store.uri(f"artifacts/{corpus}"),
            f"http://127.0.0.1:{port}",
            tracking,
            names,
        )
        running_stack.write_env()
        yield running_stack
