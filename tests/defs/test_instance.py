"""The committed Dagster instance: a queued run coordinator with per-workload limits, and
jobs whose runs carry the tag those limits read."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from rar_pipeline.defs.jobs import (
    WORKLOAD,
    enhance_corpus_job,
    enhance_queries_job,
    index_and_evaluate_job,
    train_retrievers_job,
)

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
    assert enhance_corpus_job.tags[WORKLOAD] == enhance_queries_job.tags[WORKLOAD] == "vlm"
    assert train_retrievers_job.tags[WORKLOAD] == "training"
    assert index_and_evaluate_job.tags[WORKLOAD] == "index"
