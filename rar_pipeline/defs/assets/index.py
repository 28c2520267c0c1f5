"""One LanceDB index table per evaluated config: `lancedb_index_<config>`.

Each reads every pool shard, the enhanced corpus where its representation uses it, and its
retriever's checkpoint. Its code version carries the enhanced corpus' version exactly when
it reads it, so a caption prompt edit stales the `corpus`, `full` and `inference-only`
indexes and leaves `none` and `query` fresh. An update embeds only new or changed rows
(`core.index.rows`), so a new pool shard costs its own candidates, not the corpus.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from rar_pipeline.core import names
from rar_pipeline.core.corpus.mbeir import write_jsonl
from rar_pipeline.core.evaluation.consistency import ConfigInputs, checkpoint_outdated
from rar_pipeline.core.files import values_hash
from rar_pipeline.core.index.ann import DEFAULT_PLAN
from rar_pipeline.core.index.build import IndexUpdate, update_index
from rar_pipeline.core.index.configs import INDEXED, IndexedConfig
from rar_pipeline.core.index.rows import INDEX_VERSION, Provenance, iter_index_rows
from rar_pipeline.core.retrieval.checkpoint import is_untrained
from rar_pipeline.defs.assets.corpus import candidate_pool
from rar_pipeline.defs.checks import current_checkpoint_result, current_checkpoint_spec
from rar_pipeline.defs.drift import latest_code_version
from rar_pipeline.defs.io import SUMMARY, input_file, markdown_table, progress_bar
from rar_pipeline.defs.resources import (
    CorpusResource,
    LanceDBResource,
    RetrieverResource,
    VLMResource,
)
from rar_pipeline.defs.staging import staged
from rar_pipeline.defs.versions import require_defined_version
from rar_pipeline.defs.workloads import step_tags


def index_code_version(config: IndexedConfig, checkpoint_version: str, versions: dict) -> str:
    """What makes a config's rows: the index rules, its retriever, its enhanced corpus."""
    parts = [INDEX_VERSION, values_hash([repr(DEFAULT_PLAN)])[:8], checkpoint_version]
    if config.representation.enhanced_corpus:
        parts.append(versions["enhanced_corpus"])
    return "+".join(parts)


def _index_asset(
    config: IndexedConfig,
    checkpoint: dg.AssetsDefinition,
    versions: dict[str, str],
    vlm_model: str,
) -> dg.AssetsDefinition:
    deps = [dg.AssetDep(candidate_pool, partition_mapping=dg.AllPartitionMapping()), checkpoint]
    if config.representation.enhanced_corpus:
        deps.append(dg.AssetDep(names.ENHANCED_CORPUS, partition_mapping=dg.AllPartitionMapping()))
    checkpoint_version = checkpoint.code_versions_by_key[checkpoint.key] or ""

    @dg.asset(
        name=config.index_asset,
        op_tags=step_tags(config.index_asset),
        group_name=names.INDEX_GROUP,
        code_version=index_code_version(config, checkpoint_version, versions),
        deps=deps,
        kinds={"lancedb"},
        tags={names.CONFIG_TAG: config.name},
        check_specs=[current_checkpoint_spec(config.index_asset)],
    )
    @staged
    def lancedb_index(
        context: dg.AssetExecutionContext,
        corpus: CorpusResource,
        retriever: RetrieverResource,
        vlm: VLMResource,
        lancedb: LanceDBResource,
    ) -> dg.MaterializeResult:
        """Every candidate embedded by this config's retriever, with vector and text indexes."""
        require_defined_version(context, vlm, retriever)
        paths, layout = corpus.artifacts(), corpus.layout()
        pools = {s: input_file(paths, names.CANDIDATE_POOL, s) for s in layout.pools}
        enhanced = (
            {s: input_file(paths, names.ENHANCED_CORPUS, s) for s in layout.pools}
            if config.representation.enhanced_corpus
            else None
        )
        encoder, reference, _ = retriever.open(paths, config.retriever.name)
        inputs = ConfigInputs(
            config.index_asset, checkpoint.key.to_user_string(), reference,
            latest_code_version(context.instance, checkpoint.key), checkpoint_version,
        )  # fmt: skip
        if outdated := checkpoint_outdated(inputs):
            context.log.warning(outdated)
        if is_untrained(reference):
            context.log.warning(f"no checkpoint for {config.retriever.name}: indexing with the "
                                "untrained base encoder (zero-shot)")  # fmt: skip
        provenance = Provenance(reference, versions["enhanced_corpus"], vlm_model)
        # streamed: rows are built, diffed, embedded and written a chunk at a time
        rows = iter_index_rows(config, pools, provenance, enhanced)
        total = sum(pq.ParquetFile(p).metadata.num_rows for p in pools.values())
        with progress_bar(f"index {config.name}", total) as update:
            done = update_index(lancedb, config.table, rows, encoder, layout.root,
                                DEFAULT_PLAN, progress=update)  # fmt: skip
        if done.rebuilt:
            context.log.warning(f"{config.table} could not be read ({done.rebuilt}): "
                                "dropped and built afresh")  # fmt: skip
        context.log.info(
            f"{config.table}: {done.written} rows embedded, {done.deleted} deleted, "
            f"{done.unchanged} unchanged"
        )
        report = paths.quarantine("lancedb_index", config.name)
        _left_out_report(context, report, done)
        return dg.MaterializeResult(
            metadata=_metadata(done, config, lancedb.uri, reference, report),
            check_results=[current_checkpoint_result(outdated, reference)],
        )

    return lancedb_index


def build_index_assets(
    checkpoints: dict[str, dg.AssetsDefinition], versions: dict[str, str], vlm_model: str
) -> list[dg.AssetsDefinition]:
    """An index asset per `INDEXED` config; `checkpoints` maps a config to its checkpoint."""
    return [
        _index_asset(config, checkpoints[config.retriever.name], versions, vlm_model)
        for config in INDEXED.values()
    ]


def _left_out_report(context: dg.AssetExecutionContext, report: Path, done: IndexUpdate) -> None:
    """Rows left out (nothing embeddable) or embedded from their text alone, as JSON lines."""
    problems = [{**r, "embedded": "nothing"} for r in done.failed] + [
        {**r, "embedded": "text only"} for r in done.degraded
    ]
    write_jsonl(report, problems)  # empty when all went well: the file says so
    if problems:
        context.log.warning(f"{len(done.failed)} rows left out, {len(done.degraded)} "
                            f"embedded from their text alone: see {report}")  # fmt: skip


def _metadata(
    done: IndexUpdate, config: IndexedConfig, uri: str, reference: str, report: Path
) -> dict[str, Any]:
    """What the UI shows for an index update."""
    return {
        SUMMARY: f"{done.index['rows']} rows ({done.written} embedded, {done.deleted} "
        f"deleted), table v{done.index['table_version']}"
        + (" (rebuilt: it could not be read)" if done.rebuilt else ""),
        "dagster/row_count": done.index["rows"],
        "table": config.table,
        "table_version": done.index["table_version"],
        "uri": uri,
        "rows_embedded": done.written,
        "rows_deleted": done.deleted,
        "rows_unchanged": done.unchanged,
        "rebuilt": done.rebuilt or "no",
        "rows_left_out": len(done.failed),
        "rows_text_only": len(done.degraded),
        "left_out_report": dg.MetadataValue.path(str(report)),
        "embed_items_per_s": round(done.items_per_s, 1),
        "retriever": reference,
        "vector_index": str(done.index["vector_index"]),
        "index_params": dg.MetadataValue.json(done.index.get("index_params", {})),
        "fts_index": done.index["fts_index"],
        # searched exactly until the maintain_indexes job folds them in (defs.maintenance)
        "unindexed_rows": done.index["unindexed_rows"],
        "by_pool": markdown_table(
            ["pool", "written", "deleted"],
            [[p, c["written"], c["deleted"]] for p, c in sorted(done.by_pool.items())],
        ),
    }
