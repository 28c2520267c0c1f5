"""Partitions: a pool shard and a query task are names a person recognises (file stems).

Both are dynamic: a data root decides which exist. Each corpus has its own pair, named in
its namespace (`defs.namespace`: `demo__pool_shards`), so two corpora never share a
partition list; the bare pair below is the graph's before it is put in a namespace.
`register_corpus_partitions` adds a corpus' keys (the CLI and the `demo_corpus` asset call
it; the `corpus_files_sensor` does it on a tick).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import dagster as dg

from rar_pipeline.core.corpus.mbeir import CorpusLayout

POOL_SHARDS = "pool_shards"  # e.g. "mbeir_cirr_task7_cand_pool", "mbeir_union_test_cand_pool"
QUERY_TASKS = "query_tasks"  # e.g. "mbeir_cirr_task7" (all of its splits)
pool_shards = dg.DynamicPartitionsDefinition(name=POOL_SHARDS)
query_tasks = dg.DynamicPartitionsDefinition(name=QUERY_TASKS)


def kind_of(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    """POOL_SHARDS or QUERY_TASKS for a graph's partitions (in any namespace), else None."""
    name = getattr(partitions_def, "name", None) or ""
    return next((k for k in (POOL_SHARDS, QUERY_TASKS) if name.split("__")[-1] == k), None)


class CorpusPartitions(NamedTuple):
    """One graph's pool shards and query tasks."""

    pools: dg.DynamicPartitionsDefinition
    tasks: dg.DynamicPartitionsDefinition

    @classmethod
    def of(cls, assets: Iterable[dg.AssetsDefinition]) -> CorpusPartitions:
        """The partitions the graph's assets use (the bare pair if none does)."""
        found = {kind_of(a.partitions_def): a.partitions_def for a in assets}
        return cls(found.get(POOL_SHARDS, pool_shards), found.get(QUERY_TASKS, query_tasks))  # type: ignore[arg-type]

    @classmethod
    def in_namespace(cls, namespace: str) -> CorpusPartitions:
        """The pair of `namespace` ("" for the bare pair)."""
        if not namespace:
            return cls(pool_shards, query_tasks)
        return cls(
            dg.DynamicPartitionsDefinition(name=f"{namespace}__{POOL_SHARDS}"),
            dg.DynamicPartitionsDefinition(name=f"{namespace}__{QUERY_TASKS}"),
        )


def missing_partition_requests(
    instance: dg.DagsterInstance, layout: CorpusLayout, partitions: CorpusPartitions
) -> list[dg.AddDynamicPartitionsRequest]:
    """Requests adding the corpus' shards and tasks that the instance does not know yet."""
    requests = []
    for definition, keys in ((partitions.pools, layout.pools), (partitions.tasks, layout.queries)):
        known = set(instance.get_dynamic_partitions(definition.name))
        new = sorted(k for k in keys if k not in known)
        if new:
            requests.append(definition.build_add_request(new))
    return requests


def register_corpus_partitions(
    instance: dg.DagsterInstance, layout: CorpusLayout, partitions: CorpusPartitions
) -> dict[str, list[str]]:
    """Add the corpus' shards and tasks to the instance; returns what was new."""
    added: dict[str, list[str]] = {}
    for request in missing_partition_requests(instance, layout, partitions):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        added[request.partitions_def_name] = list(request.partition_keys)
    return added
