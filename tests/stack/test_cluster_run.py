"""The whole graph on the cluster deployment, with nothing on a local disk but workers' copies.

Real servers, each a process group of its own on a free 127.0.0.1 port: PostgreSQL (the
Dagster instance, the shared cache, MLflow's store), Redis (Celery's broker), SeaweedFS
(the data root and the artifacts, S3), an MLflow server (artifacts proxied to the bucket).
Two `rar worker`s, each in an empty folder of its own, take every step. The mini corpus
is uploaded to the bucket; the project folder the runs start from holds nothing of it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest

from rar_pipeline.core.mirror import filesystem_for, upload_tree
from rar_pipeline.stack.servers import ObjectStore, mlflow_server, seaweedfs
from tests.conftest import require_server
from tests.stack.conftest import Deployment, worker


@pytest.fixture
def cluster(
    tmp_path: Path, new_database, redis_url: str, mini_corpus: Path
) -> Iterator[tuple[Deployment, ObjectStore]]:
    require_server("weed")
    project = tmp_path / "project"
    (project / "dagster_home").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml",
                project / "dagster_home")  # fmt: skip
    dagster_db = new_database("dagster")
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(seaweedfs(tmp_path / "seaweedfs"))
        mlflow = stack.enter_context(mlflow_server(
            tmp_path / "mlflow", new_database("mlflow").replace(
                "postgresql://", "postgresql+psycopg2://"), store))  # fmt: skip
        _, path = filesystem_for(store.uri("data/mbeir_mini"))
        upload_tree(mini_corpus, store.filesystem(), path)
        env = {
            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
            "DAGSTER_HOME": str(project / "dagster_home"),
            "DAGSTER_POSTGRES_URL": dagster_db.replace("postgresql://", "postgresql+psycopg2://"),
            "RAR_CELERY_BROKER_URL": redis_url,
            "RAR_PROJECT_DIR": str(project),
            "RAR_DATA_ROOT": store.uri("data/mbeir_mini"),
            "RAR_ARTIFACTS_DIR": store.uri("artifacts/mbeir_mini"),
            "RAR_CACHE_URL": new_database("cache"),
            "RAR_WORK_DIR": str(tmp_path / "run-host"),
            "RAR_EPOCHS": "2",
            "MLFLOW_TRACKING_URI": mlflow,
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            **store.credentials,
        }  # fmt: skip
        yield Deployment(env, tmp_path), store


def _stepped_on_workers(instance: dg.DagsterInstance, run_id: str) -> tuple[set, set]:
    """(steps started, steps a Celery worker said it executed) of a run."""
    started, on_workers = set(), set()
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started.add(event.step_key)
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and "Celery worker" in (
            event.event_specific_data.metadata
        ):
            on_workers.add(event.step_key)
    return started, on_workers


def _s3(store: ObjectStore):
    return boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=store.access_key,
                        aws_secret_access_key=store.secret_key)  # fmt: skip


def _own_folder(deployment: Deployment, name: str) -> Deployment:
    """The deployment as a worker sees it: its local copies in its own temporary folder."""
    work = deployment.root / f"worker-{name}" / "tmp"
    return Deployment({**deployment.env, "RAR_WORK_DIR": str(work)}, deployment.root)


def _recalls(rows: list[dict]) -> dict[tuple, dict[str, float]]:
    return {(r["config"], r["task"], r["setting"]):
            {k: round(v, 9) for k, v in r.items() if k.startswith("recall_at_")}
            for r in rows}  # fmt: skip


def _local_run(root: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """`rar run` on one machine (sqlite, local folders), as the README's quick start does."""
    from rar_pipeline.cli import main
    from tests.projects import point_at_project

    with monkeypatch.context() as patch:
        point_at_project(patch, root)
        patch.setenv("RAR_EPOCHS", "2")
        assert main(["run", "--data", str(corpus)]) == 0
    report = root / "artifacts" / corpus.name / "evaluation" / "report.json"
    return json.loads(report.read_text())["rows"]


@pytest.mark.slow
def test_the_mini_corpus_runs_through_the_graph_on_workers_with_everything_in_the_stores(
    cluster: tuple[Deployment, ObjectStore], mini_corpus: Path, monkeypatch: pytest.MonkeyPatch
):
    deployment, store = cluster
    with (
        worker(_own_folder(deployment, "one"), "one", "vlm", "default"),
        worker(_own_folder(deployment, "two"), "two", "gpu", "default"),
    ):
        runs = deployment.run()
    assert all(r["success"] for r in runs), runs

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", deployment.env["DAGSTER_POSTGRES_URL"])
    monkeypatch.setenv("DAGSTER_HOME", deployment.env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        for run in runs:
            started, on_workers = _stepped_on_workers(instance, run["run_id"])
            assert started and started <= on_workers, run  # every step ran on a worker

    s3 = _s3(store)
    key = "artifacts/mbeir_mini/evaluation/report.json"
    rows = json.loads(s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())["rows"]
    assert {r["config"] for r in rows} >= {"none", "corpus", "query", "full"}
    # the same figures as the same corpus run on one machine
    assert _recalls(rows) == _recalls(_local_run(deployment.root / "local", mini_corpus,
                                                 monkeypatch))  # fmt: skip
    listed = s3.list_objects_v2(Bucket=store.bucket, Prefix="artifacts/")["Contents"]
    keys = {o["Key"] for o in listed}
    assert any(k.startswith("artifacts/mbeir_mini/lancedb/") for k in keys)
    assert not [k for k in keys if "/cache/" in k or "/.rar-upload-" in k]
    # the project folder the runs started from holds the instance's config, nothing else
    project = Path(deployment.env["RAR_PROJECT_DIR"])
    written = [p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()]
    assert written == ["dagster_home/dagster.yaml"]
