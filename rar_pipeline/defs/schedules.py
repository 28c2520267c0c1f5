"""Schedules.

The sensor notices changed JSONL files, not images that vanish or rot on disk afterwards; a
nightly revalidation of every pool shard catches those.
"""

import dagster as dg

from rar_pipeline.defs.jobs import ingest_pools_job
from rar_pipeline.defs.namespace import namespace_of
from rar_pipeline.defs.partitions import CorpusPartitions
from rar_pipeline.defs.resources import CorpusResource


@dg.schedule(
    cron_schedule="0 3 * * *",
    job=ingest_pools_job,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Revalidate every registered pool shard nightly (images included).",
)
def nightly_pool_revalidation(
    context: dg.ScheduleEvaluationContext, corpus: CorpusResource
) -> list[dg.RunRequest]:
    """One run per registered pool shard of the corpus."""
    pools = CorpusPartitions.in_namespace(namespace_of(corpus.name)).pools
    keys = context.instance.get_dynamic_partitions(pools.name)
    stamp = context.scheduled_execution_time.isoformat()
    return [dg.RunRequest(run_key=f"{key}:{stamp}", partition_key=key) for key in keys]
