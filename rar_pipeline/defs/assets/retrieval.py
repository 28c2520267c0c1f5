"""Retrieval assets: training pairs per ablation config (checkpoints come next).

One asset per config, made by a factory, so the lineage shows the ablation's design:
`none` reads neither enhanced side, `corpus` the enhanced corpus, `query` the enhanced
queries, `full` both. Each config's code version carries the versions of exactly the
enhanced sides it reads: a caption prompt edit stales `corpus` and `full`, never `none` or
`query` (Dagster has no user-defined partition mappings, so one config-partitioned asset
could not say this).
"""

import dagster as dg

from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.corpus.tables import write_parquet
from rar_pipeline.core.retrieval.pairs import CONFIGS, PAIRS_VERSION, AblationConfig, build_pairs
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.io import read_input, read_records, samples_table
from rar_pipeline.defs.resources import CorpusResource, VLMResource

GROUP = "retrieval"


def _all(asset: dg.AssetsDefinition | str) -> dg.AssetDep:
    return dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping())


def _pairs_asset(config: AblationConfig, versions: dict[str, str]) -> dg.AssetsDefinition:
    deps = [_all(candidate_pool), _all(queries)]
    version = [PAIRS_VERSION]
    if config.enhanced_corpus:
        deps.append(_all("enhanced_corpus"))
        version.append(versions["enhanced_corpus"])
    if config.enhanced_queries:
        deps.append(_all("enhanced_queries"))
        version.append(versions["enhanced_queries"])

    @dg.asset(
        name=f"training_pairs_{config.name}",
        group_name=GROUP,
        code_version="+".join(version),
        deps=deps,
        kinds={"parquet"},
        tags={"rar/config": config.name},
    )
    def training_pairs(
        context: dg.AssetExecutionContext, corpus: CorpusResource
    ) -> dg.MaterializeResult:
        """Train and validation pairs of one ablation config (labels of train/val only)."""
        inputs = _read_inputs(context, corpus, config)
        pairs = build_pairs(config, *inputs)
        path = write_parquet(pairs.frame, corpus.artifacts().training_pairs(config.name))
        head = pairs.frame.head(5)
        samples = zip(head["qid"], head["query_txt"], head["cand_txt"], strict=True)
        return dg.MaterializeResult(
            metadata={
                **pairs.counts,
                "dagster/row_count": len(pairs.frame),
                "config": config.name,
                "path": dg.MetadataValue.path(str(path)),
                "samples": samples_table(list(samples)),
            }
        )

    return training_pairs


def _read_inputs(
    context: dg.AssetExecutionContext, corpus: CorpusResource, config: AblationConfig
) -> tuple[list[Query], dict[str, Candidate], dict | None, dict | None]:
    """What a config's pairs are built from.

    Returns:
        Queries of every ingested task, every pool's candidates, and the enhanced texts the
        config reads (`Query.key` -> text, did -> text; None where it reads none).
    """
    paths, layout = corpus.artifacts(), corpus.layout()
    tasks = [t for t in layout.queries if paths.queries(t).is_file()]
    if skipped := sorted(set(layout.queries) - set(tasks)):
        context.log.warning(f"pairs without un-ingested tasks: {skipped}")
    qs = [q for t in tasks for q in read_records(paths.queries(t), Query, f"queries[{t}]")]
    candidates = {
        c.did: c
        for shard in layout.pools
        for c in read_records(paths.pool(shard), Candidate, f"candidate_pool[{shard}]")
    }
    enhanced_queries = enhanced_corpus = None
    if config.enhanced_queries:
        enhanced_queries = {}
        for t in tasks:
            frame = read_input(paths.enhanced_queries(t), f"enhanced_queries[{t}]")
            keys = (f"{s}/{q}" for s, q in zip(frame["split"], frame["qid"], strict=True))
            enhanced_queries.update(zip(keys, frame["enhanced_txt"], strict=True))
    if config.enhanced_corpus:
        enhanced_corpus = {}
        for shard in layout.pools:
            frame = read_input(paths.enhanced_corpus(shard), f"enhanced_corpus[{shard}]")
            enhanced_corpus.update(zip(frame["did"], frame["enhanced_txt"], strict=True))
    return qs, candidates, enhanced_queries, enhanced_corpus


def build_retrieval_assets(vlm: VLMResource) -> list[dg.AssetsDefinition]:
    """The retrieval assets for a VLM configuration (its versions shape their lineage)."""
    versions = vlm.code_versions()
    return [_pairs_asset(config, versions) for config in CONFIGS.values()]
