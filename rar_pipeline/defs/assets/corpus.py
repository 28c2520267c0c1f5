"""Corpus assets: validated candidate pools and query tasks, with what was quarantined."""

from typing import Any

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.corpus.ingest import (
    READER_VERSION,
    IngestReport,
    MissingUpstreamError,
    ingest_pool,
    ingest_queries,
    known_candidate_ids,
)
from rar_pipeline.core.corpus.mbeir import qrels_missing_text
from rar_pipeline.defs.checks import (
    quarantine_ceiling_result,
    quarantine_ceiling_spec,
    quarantine_rate_result,
    quarantine_rate_spec,
)
from rar_pipeline.defs.io import SUMMARY, clip, markdown_table
from rar_pipeline.defs.partitions import pool_shards, query_tasks
from rar_pipeline.defs.resources import CorpusResource
from rar_pipeline.defs.staging import staged
from rar_pipeline.defs.workloads import step_tags


def _warn_quarantine(context: dg.AssetExecutionContext, report: IngestReport) -> None:
    if report.quarantined:
        context.log.warning(
            f"{len(report.quarantined)} rows quarantined in {context.partition_key}: "
            f"{report.summary['by_reason']} (see {report.quarantine_file})"
        )


def _report_metadata(report: IngestReport) -> dict[str, Any]:
    summary = report.summary
    by_modality = summary["by_modality"]
    metadata: dict[str, Any] = {
        SUMMARY: f"{summary['rows']} rows, {summary['quarantined']} quarantined",
        "dagster/row_count": summary["rows"],
        "rows_text": by_modality.get("text", 0),
        "rows_image": by_modality.get("image", 0),
        "rows_image_text": by_modality.get("image,text", 0),
        "quarantined": summary["quarantined"],
        "quarantine_rate": summary["quarantine_rate"],
        "quarantined_by_reason": summary["by_reason"],
        "sources": report.sources,
        "preview": markdown_table(
            list(report.preview.columns), report.preview.head(5).values.tolist()
        )
        if not report.preview.empty
        else "(no rows)",
    }
    if report.output is not None:
        metadata["path"] = dg.MetadataValue.path(str(report.output))
    if report.quarantine_file is not None:
        metadata["quarantine_file"] = dg.MetadataValue.path(str(report.quarantine_file))
    if report.quarantined:
        metadata["quarantine_sample"] = markdown_table(
            ["source", "line", "id", "reason", "detail"],
            [
                [q.source, q.line, q.row_id, q.reason.value, q.detail]
                for q in report.quarantined[:10]
            ],
        )
    return metadata


def _ingested(
    context: dg.AssetExecutionContext,
    report: IngestReport,
    corpus: CorpusResource,
    metadata: dict[str, Any],
) -> dg.MaterializeResult:
    """An ingest step's result: its metadata, data version and quarantine-rate check."""
    _warn_quarantine(context, report)
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(report.data_version),
        check_results=[
            quarantine_rate_result(
                report.summary, corpus.max_quarantine_rate, partition=context.partition_key
            ),
            quarantine_ceiling_result(report.summary, corpus.block_quarantine_rate),
        ],
    )


def _query_metadata(report: IngestReport) -> dict[str, Any]:
    extra = report.extra
    return {
        **_report_metadata(report),
        "rows_per_split": {s: v["rows"] for s, v in extra["splits"].items()},
        "qrels_rows": extra["qrels_rows"],
        "qrels_missing": ", ".join(extra["qrels_missing"]) or "none",
        "instructions": [[clip(p) for p in ps] for ps in extra["instructions"][:20]],
        "instructions_quarantined": len(extra["instructions_quarantined"]),
        "qids_in_several_splits": len(extra["qids_in_several_splits"]),
        "conflicting_positives": len(extra["conflicting_positives"]),
        "dropped_positives": extra["dropped_refs"].get("positive", 0),
        "dropped_negatives": extra["dropped_refs"].get("negative", 0),
    }


def _warn_findings(context: dg.AssetExecutionContext, report: IngestReport) -> None:
    """Warn about what the corpus should fix although every row was kept."""
    if conflicts := report.extra["conflicting_positives"]:
        context.log.warning(
            f"{len(conflicts)} positives are defined with different content in different pools "
            f"(e.g. {[clip(d, 60) for d in conflicts[:3]]}): fix the corpus; which one a "
            "retriever indexes is undefined"
        )
    if missing := report.extra["qrels_missing"]:
        context.log.warning(qrels_missing_text(report.key, missing))
    if shared := report.extra["qids_in_several_splits"]:
        context.log.warning(
            f"{len(shared)} qids appear in more than one split (e.g. "
            f"{[clip(q, 60) for q in shared[:3]]}); each split's query keeps its own text and "
            "rewrite, but check the corpus for a train/test leak"
        )


@dg.asset(
    name=names.CANDIDATE_POOL,
    op_tags=step_tags(names.CANDIDATE_POOL),
    partitions_def=pool_shards,
    group_name=names.CORPUS_GROUP,
    code_version=READER_VERSION,
    check_specs=[
        quarantine_rate_spec(names.CANDIDATE_POOL),
        quarantine_ceiling_spec(names.CANDIDATE_POOL),
    ],  # fmt: skip
    kinds={"parquet"},
)
@staged
def candidate_pool(
    context: dg.AssetExecutionContext, corpus: CorpusResource
) -> dg.MaterializeResult:
    """One candidate pool file, validated: good rows to Parquet, bad rows quarantined."""
    report = ingest_pool(
        corpus.layout(),
        context.partition_key,
        corpus.artifacts(),
        image_check=corpus.image_policy(),
        progress=True,
    )
    return _ingested(context, report, corpus, _report_metadata(report))


@dg.asset(
    name=names.QUERIES,
    op_tags=step_tags(names.QUERIES),
    partitions_def=query_tasks,
    group_name=names.CORPUS_GROUP,
    code_version=READER_VERSION,
    deps=[dg.AssetDep(candidate_pool, partition_mapping=dg.AllPartitionMapping())],
    check_specs=[quarantine_rate_spec(names.QUERIES), quarantine_ceiling_spec(names.QUERIES)],
    kinds={"parquet"},
)
@staged
def queries(context: dg.AssetExecutionContext, corpus: CorpusResource) -> dg.MaterializeResult:
    """One query task (all splits) with its qrels, validated against every candidate pool."""
    layout = corpus.layout()
    try:
        known = known_candidate_ids(corpus.artifacts(), layout.pools)
    except MissingUpstreamError as exc:
        raise dg.Failure(
            description=f"{exc}. Materialize candidate_pool for every shard first.",
        ) from exc
    report = ingest_queries(
        layout,
        context.partition_key,
        corpus.artifacts(),
        known_dids=known,
        image_check=corpus.image_policy(),
        progress=True,
    )
    _warn_findings(context, report)
    return _ingested(context, report, corpus, _query_metadata(report))
