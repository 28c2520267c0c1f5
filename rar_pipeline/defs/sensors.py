"""Sensors: notice new or changed corpus files, add their partitions, launch their runs."""

import json
from typing import Any

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.corpus.mbeir import CorpusLayout, LayoutError
from rar_pipeline.defs.jobs import ingest_pools_job, ingest_queries_job
from rar_pipeline.defs.namespace import namespace_of
from rar_pipeline.defs.partitions import CorpusPartitions, missing_partition_requests
from rar_pipeline.defs.resources import CorpusResource


def file_states(layout: CorpusLayout) -> dict[str, str]:
    """A cheap fingerprint (size and mtime) of every file behind each partition."""

    def stamp(paths) -> str:
        return ";".join(
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(paths)
        )

    states = {f"pool/{k}": stamp([p]) for k, p in layout.pools.items()}
    for task, splits in layout.queries.items():
        states[f"task/{task}"] = stamp([*splits.values(), *layout.qrels.get(task, {}).values()])
    return states


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def runs_in_flight(instance: dg.DagsterInstance, **filters: Any) -> bool:
    """Whether a run matching `filters` (`dg.RunsFilter`'s: job_name, tags) is not done."""
    return bool(instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT, **filters), limit=1))


@dg.sensor(
    jobs=[ingest_pools_job, ingest_queries_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Watches the data root: registers new pool shards and query tasks as "
    "partitions and ingests files that are new or changed. Query tasks are revalidated "
    "after pool changes, once no pool run is in flight.",
)
def corpus_files_sensor(
    context: dg.SensorEvaluationContext, corpus: CorpusResource
) -> dg.SensorResult | dg.SkipReason:
    """Ingest new or changed corpus files."""
    try:
        layout = corpus.current_layout()
    except LayoutError as exc:
        return dg.SkipReason(str(exc))
    previous = json.loads(context.cursor) if context.cursor else {}
    states = file_states(layout)
    pools = [k for k in layout.pools if previous.get(f"pool/{k}") != states[f"pool/{k}"]]
    cursor = dict(states)
    run_requests = [
        dg.RunRequest(
            run_key=f"{k}:{states['pool/' + k]}", job_name="ingest_pools", partition_key=k
        )
        for k in pools
    ]
    if pools:
        # Every task is validated against the pools: revalidate all of them once the pool
        # runs have finished (an empty state always differs from the file state).
        cursor.update({f"task/{t}": "" for t in layout.queries})
    elif runs_in_flight(context.instance, job_name=names.INGEST_POOLS_JOB):
        cursor.update({f"task/{t}": previous.get(f"task/{t}", "") for t in layout.queries})
    else:
        run_requests += [
            dg.RunRequest(
                run_key=f"{t}:{states['task/' + t]}", job_name="ingest_queries", partition_key=t
            )
            for t in layout.queries
            if previous.get(f"task/{t}") != states[f"task/{t}"]
        ]
    partitions = CorpusPartitions.in_namespace(namespace_of(corpus.name))
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=missing_partition_requests(
            context.instance, layout, partitions
        ),
        cursor=json.dumps(cursor),
    )
