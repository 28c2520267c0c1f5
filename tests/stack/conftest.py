"""What the stack's tests share: a deployment's environment, its workers, its runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.stack.processes import server_process

REPO = Path(__file__).resolve().parents[2]
RAR = Path(sys.executable).with_name("rar")


@dataclass(frozen=True)
class Deployment:
    """The environment every process of a deployment shares, and its test folder."""

    env: dict[str, str]
    root: Path

    def run(self, *targets: str, check: bool = True) -> list[dict]:
        """Runs as a run worker launches them (`rar_pipeline.stack.graph`); how they ended.

        With `check`, every run must have succeeded.
        """
        out = subprocess.run(
            [sys.executable, "-m", "rar_pipeline.stack.graph", *targets], env=self.env, cwd=REPO,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert out.returncode == 0 or (not check and runs), out.stderr[-4000:]
        return runs

    def instance(self) -> contextlib.AbstractContextManager[dg.DagsterInstance]:
        """The deployment's Dagster instance (in PostgreSQL), as its processes see it."""
        return _instance_of(self)


@contextlib.contextmanager
def _instance_of(deployment: Deployment) -> Iterator[dg.DagsterInstance]:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
            patch.setenv(name, deployment.env[name])
        with dg.DagsterInstance.get() as instance:
            yield instance


@contextlib.contextmanager
def worker(deployment: Deployment, name: str, *queues: str) -> Iterator[Path]:
    """A `rar worker` on `queues`, in an empty folder of its own; yields its log."""
    folder = deployment.root / f"worker-{name}"
    folder.mkdir()
    log = folder / "worker.log"
    command = [str(RAR), "worker", "--name", name, *(f"--queue={q}" for q in queues)]
    with server_process(
        command, lambda: b" ready." in log.read_bytes(), env=deployment.env, log=log,
        cwd=folder, start_timeout=120,
    ):  # fmt: skip
        yield log


@pytest.fixture
def deployment(tmp_path: Path, new_database, redis_url: str, mini_corpus: Path) -> Deployment:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAR_", "DAGSTER_"))},
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": new_database("dagster").replace(
            "postgresql://", "postgresql+psycopg2://"
        ),
        "RAR_CELERY_BROKER_URL": redis_url,
        "RAR_PROJECT_DIR": str(tmp_path),
        "RAR_DATA_ROOT": str(mini_corpus),
        "RAR_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return Deployment(env, tmp_path)
