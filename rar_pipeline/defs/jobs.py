"""Jobs: one per partitioned stage, so runs, backfills and sensors can target a stage.

Partitioning is inferred from the selected assets (pool shards, query tasks). Runs that
load a VLM, train, or index carry a `rar/workload` tag (`defs.workloads`):
`dagster_home/dagster.yaml` limits how many of each run at once.
"""

from __future__ import annotations

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.retrieval.pairs import CONFIGS
from rar_pipeline.defs.workloads import run_tags

VLM_RUN = run_tags("vlm")
TRAINING_RUN = run_tags("training")
INDEX_RUN = run_tags("index")


def _job(
    name: str, selection: dg.AssetSelection, description: str, tags: dict | None = None
) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(name, selection=selection, description=description, tags=tags)


def assets(*asset_names: str) -> dg.AssetSelection:
    """The assets called `asset_names`, in whichever corpus' namespace (`defs.namespace`)."""
    return dg.AssetSelection.from_string(
        " or ".join(f'key:"{n}" or key:"*/{n}"' for n in asset_names)
    )


groups = dg.AssetSelection.groups
ingest_pools_job = _job(
    names.INGEST_POOLS_JOB, assets(names.CANDIDATE_POOL),
    "Validate candidate pool shards into Parquet plus quarantine files.",
)  # fmt: skip
ingest_queries_job = _job(
    names.INGEST_QUERIES_JOB, assets(names.QUERIES),
    "Validate query tasks (all splits, with qrels) against the candidate pools.",
)  # fmt: skip
JOBS = [
    ingest_pools_job,
    ingest_queries_job,
    _job(names.BUILD_DEMO_JOB, assets(names.DEMO_CORPUS),
         "Write the shapeshop demo corpus and register its partitions."),
    _job(names.ENHANCE_CORPUS_JOB, assets(names.CORPUS_CAPTIONS, names.ENHANCED_CORPUS),
         "Caption pool shards and merge the captions into what the retriever embeds.", VLM_RUN),
    _job(names.ENHANCE_QUERIES_JOB, assets(names.ENHANCED_QUERIES),
         "Rewrite query tasks: captions, QA rewrites, modification constraints.", VLM_RUN),
    _job(names.TRAINING_PAIRS_JOB,
         assets(*(names.per_config(names.TRAINING_PAIRS, c) for c in CONFIGS)),
         "Build the training pairs of every ablation config (none, corpus, query, full)."),
    _job(names.TRAIN_RETRIEVERS_JOB, groups(names.RETRIEVAL_GROUP),
         "Build the pairs and train the retriever of every ablation config.", TRAINING_RUN),
    _job(names.INDEX_AND_EVALUATE_JOB, groups(names.INDEX_GROUP, names.EVALUATION_GROUP),
         "Bring every config's LanceDB index up to date and run the ablation.", INDEX_RUN),
]  # fmt: skip
