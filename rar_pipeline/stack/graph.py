"""The whole graph as runs of a deployment, stage by stage: `rar stack demo` and the tests.

`python -m rar_pipeline.stack.graph [SPEC ...]` registers the corpus' partitions on the instance of
DAGSTER_HOME, then executes one run per SPEC through `execute_job` on the project's
definitions (so with the executor the settings choose: Celery when RAR_CELERY_BROKER_URL
is set). A SPEC is `ASSET`, `ASSET:PARTITION`, `ASSET:*` (one run per partition), or
`unpartitioned` (one run of every unpartitioned asset after enhancement: the pairs,
checkpoints, indexes and evaluation). With no SPEC, the
whole graph (`STAGES`). It prints one JSON line per run.
"""

from __future__ import annotations

import json
import os
import sys

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

from rar_pipeline.core import names
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.namespace import namespace_of
from rar_pipeline.defs.partitions import CorpusPartitions, register_corpus_partitions
from rar_pipeline.defs.resources import resources_from_settings

# the graph's stages in the order they run: one run per partition, then the rest in one run
STAGES = ("candidate_pool:*", "queries:*", "offline_captioner", "corpus_captions:*",
          "enhanced_corpus:*", "enhanced_queries:*", "unpartitioned")  # fmt: skip


def main(specs: list[str]) -> int:
    """Run `specs` (default: `STAGES`); 0 when every run succeeded."""
    specs = specs or list(STAGES)
    settings = load_settings()
    instance = dg.DagsterInstance.get()
    namespace = namespace_of(settings.corpus.name)
    layout = resources_from_settings(settings)["corpus"].current_layout()
    register_corpus_partitions(instance, layout, CorpusPartitions.in_namespace(namespace))
    repository = ReconstructableRepository.for_module(
        "rar_pipeline.definitions", "defs", working_directory=os.getcwd()
    )
    job = repository.get_reconstructable_job("__ASSET_JOB")
    graph = repository.get_definition().asset_graph
    every = {"candidate_pool": sorted(layout.pools), "queries": sorted(layout.queries)}
    ok = True
    for spec in specs:
        asset, _, partition = spec.partition(":")
        if asset == "unpartitioned":
            keys = [k for k in graph.materializable_asset_keys
                    if graph.get(k).partitions_def is None
                    and graph.get(k).group_name not in (names.DEMO_GROUP,
                                                        names.ENHANCEMENT_GROUP)]  # fmt: skip
        else:
            keys = [dg.AssetKey([namespace, asset])]
            if partition == "*":
                partition_def = graph.get(keys[0]).partitions_def
                every.setdefault(asset, partition_def.get_partition_keys(
                    dynamic_partitions_store=instance))  # fmt: skip
        for key in every[asset] if partition == "*" else [partition or None]:
            tags = {"dagster/partition": key} if key else {}
            with dg.execute_job(
                job, instance, asset_selection=keys, tags=tags, raise_on_error=False
            ) as result:
                line = {"asset": asset, "partition": key, "run_id": result.run_id,
                        "success": result.success}  # fmt: skip
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
                ok = ok and result.success
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
