"""Partitions: a pool shard and a query task are names a person recognises (file stems).

Both are dynamic: a data root decides which exist. `register_corpus_partitions` adds them
(the CLI and the `demo_corpus` asset call it; the `corpus_files_sensor` does it on a tick).
"""

from __future__ import annotations

import dagster as dg

from rar_pipeline.core.corpus.mbeir import CorpusLayout

# e.g. "mbeir_cirr_task7_cand_pool", "mbeir_union_test_cand_pool"
pool_shards = dg.DynamicPartitionsDefinition(name="pool_shards")
# e.g. "mbeir_cirr_task7" (all of its splits)
query_tasks = dg.DynamicPartitionsDefinition(name="query_tasks")


def missing_partition_requests(
    instance: dg.DagsterInstance, layout: CorpusLayout
) -> list[dg.AddDynamicPartitionsRequest]:
    """Requests adding the corpus' shards and tasks that the instance does not know yet."""
    requests = []
    for definition, keys in ((pool_shards, layout.pools), (query_tasks, layout.queries)):
        known = set(instance.get_dynamic_partitions(definition.name))
        new = sorted(k for k in keys if k not in known)
        if new:
            requests.append(definition.build_add_request(new))
    return requests


def register_corpus_partitions(
    instance: dg.DagsterInstance, layout: CorpusLayout
) -> dict[str, list[str]]:
    """Add the corpus' shards and tasks to the instance; returns what was new."""
    added: dict[str, list[str]] = {}
    for request in missing_partition_requests(instance, layout):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        added[request.partitions_def_name] = list(request.partition_keys)
    return added
