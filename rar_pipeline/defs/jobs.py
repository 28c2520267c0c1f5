"""Jobs: one per partitioned stage, so runs, backfills and sensors can target a stage.

Partitioning is inferred from the selected assets (pool shards, query tasks). Runs that
load a VLM, train, or index carry a `rar/workload` tag: `dagster_home/dagster.yaml` limits
how many of each run at once (its `tag_concurrency_limits`).
"""

from __future__ import annotations

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.names import WORKLOAD
from rar_pipeline.core.retrieval.pairs import CONFIGS

VLM_RUN = {WORKLOAD: "vlm"}
TRAINING_RUN = {WORKLOAD: "training"}
INDEX_RUN = {WORKLOAD: "index"}

ingest_pools_job = dg.define_asset_job(
    names.INGEST_POOLS_JOB,
    selection=dg.AssetSelection.assets(names.CANDIDATE_POOL),
    description="Validate candidate pool shards into Parquet plus quarantine files.",
)
ingest_queries_job = dg.define_asset_job(
    names.INGEST_QUERIES_JOB,
    selection=dg.AssetSelection.assets(names.QUERIES),
    description="Validate query tasks (all splits, with qrels) against the candidate pools.",
)
build_demo_job = dg.define_asset_job(
    names.BUILD_DEMO_JOB,
    selection=dg.AssetSelection.assets(names.DEMO_CORPUS),
    description="Write the shapeshop demo corpus and register its partitions.",
)

enhance_corpus_job = dg.define_asset_job(
    names.ENHANCE_CORPUS_JOB,
    selection=dg.AssetSelection.assets(names.CORPUS_CAPTIONS, names.ENHANCED_CORPUS),
    description="Caption pool shards and merge the captions into what the retriever embeds.",
    tags=VLM_RUN,
)
enhance_queries_job = dg.define_asset_job(
    names.ENHANCE_QUERIES_JOB,
    selection=dg.AssetSelection.assets(names.ENHANCED_QUERIES),
    description="Rewrite query tasks: captions, QA rewrites, modification constraints.",
    tags=VLM_RUN,
)

training_pairs_job = dg.define_asset_job(
    names.TRAINING_PAIRS_JOB,
    selection=dg.AssetSelection.assets(
        *(names.per_config(names.TRAINING_PAIRS, c) for c in CONFIGS)
    ),
    description="Build the training pairs of every ablation config (none, corpus, query, full).",
)
train_retrievers_job = dg.define_asset_job(
    names.TRAIN_RETRIEVERS_JOB,
    selection=dg.AssetSelection.groups(names.RETRIEVAL_GROUP),
    description="Build the pairs and train the retriever of every ablation config.",
    tags=TRAINING_RUN,
)

index_and_evaluate_job = dg.define_asset_job(
    names.INDEX_AND_EVALUATE_JOB,
    selection=dg.AssetSelection.groups(names.INDEX_GROUP, names.EVALUATION_GROUP),
    description="Bring every config's LanceDB index up to date and run the ablation.",
    tags=INDEX_RUN,
)

JOBS = [
    ingest_pools_job,
    ingest_queries_job,
    build_demo_job,
    enhance_corpus_job,
    enhance_queries_job,
    training_pairs_job,
    train_retrievers_job,
    index_and_evaluate_job,
]
