"""Where a run's steps execute: its own processes, or Celery workers chosen by queue.

With no broker set (`core.cluster.ClusterConfig`) the definitions keep Dagster's default
executor: steps run in the run's own processes. With one, every job runs on
`dagster_celery`'s executor: each step is a Celery task sent to the queue its asset's op
tag names (`defs.workloads`: `vlm`, `gpu`, `default`), and the workers started on those
queues (`rar worker`, `stack.celery_app`) execute it against the same instance.

A worker that dies mid-step has not acknowledged its task: tasks are acknowledged when
they end (`task_acks_late`). A step's process killed under a living worker (SIGKILL, the
kernel's OOM killer) is handed back at once (`task_reject_on_worker_lost`) and runs again.
A whole worker lost (its machine gone) says nothing: a Redis broker hands its task to
another worker once the visibility timeout has passed (`celery_visibility_timeout_s`),
which every worker checks for every 10 s. Either way the step runs again from the start;
its outputs are written atomically and its VLM calls come from the cache.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from rar_pipeline.core.cluster import ClusterConfig
from rar_pipeline.defs.workloads import DEFAULT_QUEUE

# what the executor's Celery app and the workers' must agree on
CELERY_SETTINGS: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,  # a worker takes one step at a time per process
    "task_default_queue": DEFAULT_QUEUE,
    "broker_connection_retry_on_startup": True,
}


def celery_config(cluster: ClusterConfig) -> dict[str, Any]:
    """`dagster_celery`'s executor config (and its workers' app) for a broker."""
    lost_workers = {  # each worker looks for tasks of lost workers every 10 s (kombu's redis)
        "visibility_timeout": cluster.celery_visibility_timeout_s,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }
    return {
        "broker": cluster.celery_broker_url,
        "backend": cluster.backend_url,
        "config_source": {**CELERY_SETTINGS, "broker_transport_options": lost_workers},
    }


def executor_for(cluster: ClusterConfig) -> dg.ExecutorDefinition | None:
    """The Celery executor when a broker is set; None keeps Dagster's default."""
    if not cluster.on_workers:
        return None
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise ImportError(
            "RAR_CELERY_BROKER_URL is set but dagster-celery is not installed: "
            "pip install 'rar_pipeline[cluster]'"
        ) from exc
    return celery_executor.configured(celery_config(cluster), name="celery_by_workload")
