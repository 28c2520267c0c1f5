"""Steps on Celery workers chosen by workload, on a Dagster instance kept in PostgreSQL.

Everything here is real: a throwaway PostgreSQL server holds the instance
(`deploy/dagster.yaml`), Redis is the broker, and two `rar worker` processes, each in an
empty folder of its own, take the `default` and the `vlm` queue. Runs are launched as a
deployment's run worker launches them (`rar_pipeline.stack.graph`).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from rar_pipeline.core import names
from rar_pipeline.core.cluster import ClusterConfig
from rar_pipeline.defs.executor import executor_for
from rar_pipeline.defs.workloads import queue_of
from tests.stack.conftest import Deployment, worker

REPO = Path(__file__).resolve().parents[2]


def test_the_deployment_keeps_the_one_machine_run_queue_and_limits():
    local = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
    deploy = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert deploy["concurrency"] == local["concurrency"]
    assert deploy["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}


def test_every_asset_step_carries_the_queue_of_its_workload():
    from rar_pipeline.defs.resources import VLMResource
    from tests.graph_resources import graph_assets

    queues = {
        key.path[-1]: assets.op.tags.get(names.CELERY_QUEUE)
        for assets in graph_assets(VLMResource(backend="offline"))
        for key in assets.keys
    }
    vlm = (names.OFFLINE_CAPTIONER, names.CORPUS_CAPTIONS, names.ENHANCED_QUERIES)
    assert [queues[name] for name in vlm] == ["vlm"] * 3
    assert queues["retriever_checkpoint_full"] == queues["lancedb_index_full"] == "gpu"
    assert queues[names.RETRIEVAL_EVAL] == "gpu"
    assert queues[names.CANDIDATE_POOL] == queues[names.ENHANCED_CORPUS] == "default"
    assert queues["training_pairs_full"] == "default"
    assert all(queues[name] == queue_of(name) for name in queues)


def test_without_a_broker_steps_stay_in_the_run_and_with_one_they_go_to_celery():
    assert executor_for(ClusterConfig()) is None
    executor = executor_for(ClusterConfig(celery_broker_url="redis://127.0.0.1:1/0"))
    assert executor.name == "celery_by_workload"


def test_a_worker_without_a_broker_says_what_to_set(capsys: pytest.CaptureFixture):
    from rar_pipeline.cli import main

    assert main(["worker", "--queue", "vlm"]) == 2
    assert "RAR_CELERY_BROKER_URL" in capsys.readouterr().err


def _workers_of(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Each step of a run -> the Celery worker that executed it (from the run's events)."""
    found = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.event_specific_data.metadata if event else {}
        if "Celery worker" in metadata:
            found[event.step_key] = metadata["Celery worker"].value.split("@")[0]
    return found


@pytest.mark.slow
def test_each_step_runs_on_a_worker_of_its_queue_and_the_instance_lives_in_postgresql(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
):
    with worker(deployment, "default", "default"), worker(deployment, "vlm", "vlm"):
        runs = deployment.run("candidate_pool:*", "queries:*", "offline_captioner")
    assert runs and all(r["success"] for r in runs)

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", deployment.env["DAGSTER_POSTGRES_URL"])
    monkeypatch.setenv("DAGSTER_HOME", deployment.env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        assert {r.run_id for r in instance.get_runs()} == {r["run_id"] for r in runs}
        for run in runs:
            executed = _workers_of(instance, run["run_id"])
            assert executed.pop(run["asset"]) == queue_of(run["asset"])  # the asset's step
            assert set(executed.values()) <= {"default"}  # its separate checks
    assert [r["asset"] for r in runs].count("candidate_pool") == 3
    assert {queue_of(r["asset"]) for r in runs} == {"default", "vlm"}
    # run and event storage are PostgreSQL's: nothing of the instance on this disk
    assert not list(Path(deployment.env["DAGSTER_HOME"]).rglob("*.db"))
