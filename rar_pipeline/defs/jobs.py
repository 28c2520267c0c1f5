"""Jobs: one per partitioned stage, so runs, backfills and sensors can target a stage.

Partitioning is inferred from the selected assets (pool shards, query tasks). Runs that
load a VLM, train, or index carry a `rar/workload` tag: `dagster_home/dagster.yaml` limits
how many of each run at once (its `tag_concurrency_limits`).
"""

from __future__ import annotations

import dagster as dg

from rar_pipeline.core.retrieval.pairs import CONFIGS

WORKLOAD = "rar/workload"  # run tag: vlm | training | index (limits in dagster.yaml)
VLM_RUN = {WORKLOAD: "vlm"}
TRAINING_RUN = {WORKLOAD: "training"}
INDEX_RUN = {WORKLOAD: "index"}

ingest_pools_job = dg.define_asset_job(
    "ingest_pools",
    selection=dg.AssetSelection.assets("candidate_pool"),
    description="Validate candidate pool shards into Parquet plus quarantine files.",
)
ingest_queries_job = dg.define_asset_job(
    "ingest_queries",
    selection=dg.AssetSelection.assets("queries"),
    description="Validate query tasks (all splits, with qrels) against the candidate pools.",
)
build_demo_job = dg.define_asset_job(
    "build_demo",
    selection=dg.AssetSelection.assets("demo_corpus"),
    description="Write the shapeshop demo corpus and register its partitions.",
)

enhance_corpus_job = dg.define_asset_job(
    "enhance_corpus",
    selection=dg.AssetSelection.assets("corpus_captions", "enhanced_corpus"),
    description="Caption pool shards and merge the captions into what the retriever embeds.",
    tags=VLM_RUN,
)
enhance_queries_job = dg.define_asset_job(
    "enhance_queries",
    selection=dg.AssetSelection.assets("enhanced_queries"),
    description="Rewrite query tasks: captions, QA rewrites, modification constraints.",
    tags=VLM_RUN,
)

training_pairs_job = dg.define_asset_job(
    "training_pairs",
    selection=dg.AssetSelection.assets(*(f"training_pairs_{c}" for c in CONFIGS)),
    description="Build the training pairs of every ablation config (none, corpus, query, full).",
)
train_retrievers_job = dg.define_asset_job(
    "train_retrievers",
    selection=dg.AssetSelection.groups("retrieval"),
    description="Build the pairs and train the retriever of every ablation config.",
    tags=TRAINING_RUN,
)

index_and_evaluate_job = dg.define_asset_job(
    "index_and_evaluate",
    selection=dg.AssetSelection.groups("index", "evaluation"),
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
