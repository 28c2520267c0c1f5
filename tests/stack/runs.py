"""Runs launched the way a deployment's run worker launches them, for the stack's tests.

`python -m tests.stack.runs ASSET[:PARTITION|:*] ...` registers the corpus' partitions on
the instance of DAGSTER_HOME, then executes one run per asset partition through
`execute_job` on the project's definitions (so with the executor the settings choose:
Celery when RAR_CELERY_BROKER_URL is set). It prints one JSON line per run.
"""

from __future__ import annotations

import json
import os
import sys

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.namespace import namespace_of
from rar_pipeline.defs.partitions import CorpusPartitions, register_corpus_partitions


def main(targets: list[str]) -> int:
    settings = load_settings()
    instance = dg.DagsterInstance.get()
    namespace = namespace_of(settings.corpus.name)
    layout = settings.corpus.layout()
    register_corpus_partitions(instance, layout, CorpusPartitions.in_namespace(namespace))
    job = ReconstructableRepository.for_module(
        "rar_pipeline.definitions", "defs", working_directory=os.getcwd()
    ).get_reconstructable_job("__ASSET_JOB")
    every = {"candidate_pool": sorted(layout.pools), "queries": sorted(layout.queries)}
    ok = True
    for target in targets:
        asset, _, partition = target.partition(":")
        for key in every[asset] if partition == "*" else [partition or None]:
            tags = {"dagster/partition": key} if key else {}
            with dg.execute_job(
                job, instance, asset_selection=[dg.AssetKey([namespace, asset])], tags=tags,
                raise_on_error=False,
            ) as result:  # fmt: skip
                line = {"asset": asset, "partition": key, "run_id": result.run_id,
                        "success": result.success}  # fmt: skip
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
                ok = ok and result.success
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
