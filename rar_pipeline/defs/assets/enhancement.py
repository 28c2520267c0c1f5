"""Enhancement assets: offline captioner memory, corpus captions, enhanced corpus, queries.

Code versions come from `VLMResource.code_versions` (the prompts the routing table sends
each side to, plus the backend, model and sampling): edit the corpus caption prompt and
exactly `corpus_captions` and `enhanced_corpus` turn stale, while `enhanced_queries` stays
fresh. The cache then recomputes only the items whose key changed.
"""

import time
from pathlib import Path
from typing import Any

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.corpus.records import Query
from rar_pipeline.core.corpus.tables import write_parquet
from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.engine import EnhanceStats
from rar_pipeline.core.enhance.merge import merge_corpus_files
from rar_pipeline.core.enhance.outputs import (
    Enhancer,
    caption_shard,
    fit_captioner,
    pool_rows,
    rewrite_queries,
)
from rar_pipeline.core.enhance.perception import Perceiver
from rar_pipeline.core.enhance.prompts import Side, routed_prompts
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.checks import (
    caption_coverage_result,
    caption_coverage_spec,
    failure_rate_result,
    failure_rate_spec,
)
from rar_pipeline.defs.drift import prompt_metadata
from rar_pipeline.defs.io import (
    SUMMARY,
    data_version,
    ingested_tasks,
    input_file,
    progress_bar,
    read_pools,
    read_queries,
    read_records,
    samples_table,
)
from rar_pipeline.defs.partitions import pool_shards, query_tasks
from rar_pipeline.defs.resources import CorpusResource, VLMResource
from rar_pipeline.defs.staging import staged
from rar_pipeline.defs.versions import require_defined_version
from rar_pipeline.defs.workloads import step_tags


def _failure_check(stats: EnhanceStats, vlm: VLMResource) -> dg.AssetCheckResult:
    attempted = stats.items - stats.items_by_type.get("text", 0)
    return failure_rate_result(stats.failures, attempted, vlm.enhance.max_failure_rate)


def empty_memory_text(train_queries: int) -> str:
    """Why the offline caption memory is empty, and what would fill it."""
    why = (
        f"the train split's {train_queries} queries label no (image, text) pair (a text "
        "query with an image positive, an image query with a text positive), or their "
        "images could not be read"
        if train_queries
        else "the corpus has no train split; add it to learn more"
    )
    return (
        f"no train-split pairs: {why}. The caption memory is empty, so captions carry only "
        "what OCR and colours see."
    )


def _partition(
    context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
) -> tuple[str, ArtifactLayout]:
    """The partition an enhancement body works on, once its code version is the defined one."""
    require_defined_version(context, vlm)
    return context.partition_key, corpus.artifacts()


def _enhancer(corpus: CorpusResource, vlm: VLMResource, paths: ArtifactLayout) -> Enhancer:
    """The configured backend with the enhancement cache, the run options and the data root."""
    cache = EnhancementCache(paths.caches)
    return Enhancer(vlm.create(paths), cache, vlm.options(), corpus.root)


def _enhanced(
    context: dg.AssetExecutionContext,
    enhancer: Enhancer,
    stats: EnhanceStats,
    path: Path,
    samples: list[tuple[str, Any, Any]],
    side: Side,
) -> dict[str, Any]:
    """Metadata every VLM-backed asset reports; failures are logged as a warning."""
    if stats.failures:
        context.log.warning(f"{stats.failures} items failed: {dict(stats.failure_reasons)}")
    return {
        SUMMARY: f"{stats.items} items, {stats.backend_calls} backend calls, "
        f"{stats.cache_hits} cached, {stats.failures} failed",
        **stats.as_metadata(),
        **prompt_metadata(routed_prompts(side, enhancer.prompts)),
        "backend": enhancer.vlm.backend,
        "model_id": enhancer.vlm.model_id,
        "path": dg.MetadataValue.path(str(path)),
        "samples": samples_table(samples),
    }


def build_enhancement_assets(vlm: VLMResource) -> list[dg.AssetsDefinition]:
    """The enhancement assets for a VLM configuration (it fixes their code versions)."""
    versions = vlm.code_versions()
    captioner = [_captioner_asset(versions)] if vlm.backend == "offline" else []
    captions = _captions_asset(versions, captioner)
    return [
        *captioner,
        captions,
        _merge_asset(versions, captions),
        _queries_asset(versions, captioner),
    ]


def _enhancement(name: str, versions: dict[str, str], **spec: Any) -> Any:
    """The decorator of an enhancement asset: its name, group, code version and queue."""
    return dg.asset(
        name=name,
        group_name=names.ENHANCEMENT_GROUP,
        code_version=versions[name],
        op_tags=step_tags(name),
        **spec,
    )


def _captioner_asset(versions: dict[str, str]) -> dg.AssetsDefinition:
    every = dg.AllPartitionMapping()

    @_enhancement(
        names.OFFLINE_CAPTIONER, versions, kinds={"python", "safetensors"},
        deps=[dg.AssetDep(queries, partition_mapping=every),
              dg.AssetDep(candidate_pool, partition_mapping=every)],
    )  # fmt: skip
    @staged
    def offline_captioner(
        context: dg.AssetExecutionContext, corpus: CorpusResource
    ) -> dg.MaterializeResult:
        """The offline enhancer's caption memory, fitted on train-split pairs only."""
        started, paths = time.perf_counter(), corpus.artifacts()
        candidates = {c.did: c for shard in read_pools(corpus).values() for c in shard}
        tasks = ingested_tasks(context, corpus, "learning")
        memory, counts = fit_captioner(read_queries(corpus, tasks), candidates, corpus.root,
                                       Perceiver(paths.perception_cache))  # fmt: skip
        if not counts["pairs"]:
            context.log.warning(empty_memory_text(counts["train_queries"]))
        memory.save(paths.captioner)
        return dg.MaterializeResult(
            metadata={
                SUMMARY: f"{counts['pairs']} train pairs",
                **counts,
                "tasks_used": tasks,
                "path": dg.MetadataValue.path(str(paths.captioner)),
                "seconds": round(time.perf_counter() - started, 2),
            },
            data_version=dg.DataVersion(memory.content_hash),
        )

    return offline_captioner


def _captions_asset(
    versions: dict[str, str], captioner: list[dg.AssetsDefinition]
) -> dg.AssetsDefinition:
    checks = [
        failure_rate_spec(names.CORPUS_CAPTIONS),
        caption_coverage_spec(names.CORPUS_CAPTIONS),
    ]

    @_enhancement(names.CORPUS_CAPTIONS, versions, partitions_def=pool_shards,
                  deps=[candidate_pool, *captioner], check_specs=checks,
                  kinds={"parquet"})  # fmt: skip
    @staged
    def corpus_captions(
        context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
    ) -> dg.MaterializeResult:
        """Dense captions of the shard's image and image+text candidates (cached)."""
        shard, paths = _partition(context, corpus, vlm)
        pool = input_file(paths, names.CANDIDATE_POOL, shard)
        enhancer = _enhancer(corpus, vlm, paths)
        with progress_bar(f"captions {shard}", pool_rows(pool)) as progress:
            # streamed: one chunk of the shard in memory at a time
            result = caption_shard(pool, paths.captions(shard), enhancer, progress=progress)
        coverage = caption_coverage_result(
            result.captioned, result.images, vlm.enhance.min_caption_coverage
        )
        return dg.MaterializeResult(
            metadata=_enhanced(
                context, enhancer, result.stats, result.path, result.samples, "corpus"
            ),
            data_version=dg.DataVersion(result.data_version),
            check_results=[_failure_check(result.stats, vlm), coverage],
        )

    return corpus_captions


def _merge_asset(versions: dict[str, str], captions: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @_enhancement(names.ENHANCED_CORPUS, versions, partitions_def=pool_shards,
                  deps=[candidate_pool, captions], kinds={"parquet"})  # fmt: skip
    @staged
    def enhanced_corpus(
        context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
    ) -> dg.MaterializeResult:
        """Candidates as the retriever embeds them: text, caption, or text + Visual Context."""
        shard, paths = _partition(context, corpus, vlm)
        pool = input_file(paths, names.CANDIDATE_POOL, shard)
        captions = input_file(paths, names.CORPUS_CAPTIONS, shard)
        # streamed: one chunk of the shard in memory at a time
        merged = merge_corpus_files(
            pool, captions, paths.enhanced_corpus(shard), vlm.options().guard
        )
        return dg.MaterializeResult(
            metadata={
                SUMMARY: f"{merged.rows} rows, {merged.without_enhanced_txt} without enhanced text",
                "dagster/row_count": merged.rows,
                **prompt_metadata(routed_prompts("corpus", vlm.enhance.prompt_set())),
                "items_by_type": dict(merged.items_by_type),
                "without_enhanced_text": merged.without_enhanced_txt,
                "guard_policy": vlm.enhance.guard.value,
                "guard_flagged": merged.guard_flagged,
                "guard_dropped": merged.guard_dropped,
                "path": dg.MetadataValue.path(str(merged.path)),
                "samples": samples_table(merged.samples),
            },
            data_version=dg.DataVersion(merged.data_version),
        )

    return enhanced_corpus


def _queries_asset(
    versions: dict[str, str], captioner: list[dg.AssetsDefinition]
) -> dg.AssetsDefinition:
    @_enhancement(names.ENHANCED_QUERIES, versions, partitions_def=query_tasks,
                  deps=[queries, *captioner], kinds={"parquet"},
                  check_specs=[failure_rate_spec(names.ENHANCED_QUERIES)])  # fmt: skip
    @staged
    def enhanced_queries(
        context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
    ) -> dg.MaterializeResult:
        """Queries as the retriever embeds them: caption, QA rewrite or distilled constraints."""
        task, paths = _partition(context, corpus, vlm)
        qs = read_records(paths.queries(task), Query, f"{names.QUERIES}[{task}]")
        enhancer = _enhancer(corpus, vlm, paths)
        with progress_bar(f"queries {task}", len(qs)) as progress:
            result = rewrite_queries(qs, enhancer, task=task, progress=progress)
        merged = result.merged
        path = write_parquet(merged.frame, paths.enhanced_queries(task))
        return dg.MaterializeResult(
            metadata={
                **_enhanced(context, enhancer, result.stats, path, merged.samples, "query"),
                "dagster/row_count": len(merged.frame),
                "query_type_override": vlm.enhance.query_type_overrides.get(task, ""),
                "guard_policy": vlm.enhance.guard.value,
                "guard_flagged": merged.guard_flagged,
            },
            data_version=data_version(merged.frame, "enhanced_txt"),
            check_results=[_failure_check(result.stats, vlm)],
        )

    return enhanced_queries
