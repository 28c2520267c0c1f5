"""Every name the graph shows a person, written once: asset keys, groups, jobs, run tags.

`defs/` names its assets, groups, jobs and tags from here, and every message that tells a
person what to materialize builds its hint with `materialize` from these names, so a hint
can never name an asset that does not exist (`tests/test_names.py` checks both ways).
No Dagster import: the CLI and `core/` messages read it.
"""

from __future__ import annotations

# -- groups, in the order they run (`rar run --through <group>` stops after one)
CORPUS_GROUP = "corpus"
ENHANCEMENT_GROUP = "enhancement"
RETRIEVAL_GROUP = "retrieval"
INDEX_GROUP = "index"
EVALUATION_GROUP = "evaluation"
DEMO_GROUP = "demo"  # runs only in `rar demo`
GROUPS = (CORPUS_GROUP, ENHANCEMENT_GROUP, RETRIEVAL_GROUP, INDEX_GROUP, EVALUATION_GROUP)

# -- assets
DEMO_CORPUS = "demo_corpus"
DEMO_CAPTION_ACCURACY = "demo_caption_accuracy"
CANDIDATE_POOL = "candidate_pool"
QUERIES = "queries"
OFFLINE_CAPTIONER = "offline_captioner"
CORPUS_CAPTIONS = "corpus_captions"
ENHANCED_CORPUS = "enhanced_corpus"
ENHANCED_QUERIES = "enhanced_queries"
RETRIEVAL_EVAL = "retrieval_eval"
# one asset per config: a prefix, then the config's name with `_` for `-` (`per_config`)
TRAINING_PAIRS = "training_pairs_"
RETRIEVER_CHECKPOINT = "retriever_checkpoint_"
LANCEDB_INDEX = "lancedb_index_"


def per_config(prefix: str, config: str) -> str:
    """The asset of one config: `per_config(LANCEDB_INDEX, "inference-only")`."""
    return prefix + config.replace("-", "_")


# -- jobs
INGEST_POOLS_JOB = "ingest_pools"
INGEST_QUERIES_JOB = "ingest_queries"
BUILD_DEMO_JOB = "build_demo"
ENHANCE_CORPUS_JOB = "enhance_corpus"
ENHANCE_QUERIES_JOB = "enhance_queries"
TRAINING_PAIRS_JOB = "training_pairs"
TRAIN_RETRIEVERS_JOB = "train_retrievers"
INDEX_AND_EVALUATE_JOB = "index_and_evaluate"
CURRENT_VERSION_CHECKS_JOB = "current_version_checks"
MAINTAIN_INDEXES_JOB = "maintain_indexes"
REFRESH_JOB = "refresh"  # launches a backfill of what `rar refresh` would run

# -- run tags
WORKLOAD = "rar/workload"  # vlm | training | index: limits in dagster_home/dagster.yaml
CELERY_QUEUE = "dagster-celery/queue"  # an op's Celery queue (dagster_celery.tags)
CONFIG_TAG = "rar/config"  # an asset's ablation config
LAUNCHED_BY = "rar/launched_by"


def materialize(asset: str, *, first: bool = False) -> str:
    """The hint that tells a person which asset to materialize (`materialize X [first]`)."""
    return f"materialize {asset}" + (" first" if first else "")
