"""The committed Dagster instance: a queued run coordinator with per-workload limits, and
jobs whose runs carry the tag those limits read."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.names import WORKLOAD
from rar_pipeline.defs.jobs import JOBS

DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster_home" / "dagster.yaml"


def test_runs_are_queued_within_per_workload_limits(tmp_path):
    shutil.copy(DAGSTER_YAML, tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    queue = instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 2
    limits = {(x["key"], x["value"]): x["limit"] for x in queue.tag_concurrency_limits}
    assert limits == {(WORKLOAD, "vlm"): 2, (WORKLOAD, "training"): 1}
    assert instance.run_launcher.__class__.__name__ == "DefaultRunLauncher"


def test_the_jobs_tag_their_runs_with_their_workload():
    tags = {job.name: (job.tags or {}).get(WORKLOAD) for job in JOBS}
    assert tags[names.ENHANCE_CORPUS_JOB] == tags[names.ENHANCE_QUERIES_JOB] == "vlm"
    assert tags[names.TRAIN_RETRIEVERS_JOB] == "training"
    assert tags[names.INDEX_AND_EVALUATE_JOB] == "index"
    assert tags[names.INGEST_POOLS_JOB] is None
