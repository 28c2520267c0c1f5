"""Retrieval assets: training pairs and a fine-tuned retriever checkpoint per ablation config.

Two assets per config, made by factories, so the lineage shows the ablation's design:
`none` reads neither enhanced side, `corpus` the enhanced corpus, `query` the enhanced
queries, `full` both. Each config's code version carries the versions of exactly the
enhanced sides it reads: a caption prompt edit stales `corpus` and `full`, never `none` or
`query` (Dagster has no user-defined partition mappings, so one config-partitioned asset
could not say this). A checkpoint reads only its own config's pairs, so it inherits that.
"""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from rar_pipeline.core import names
from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.corpus.tables import write_parquet
from rar_pipeline.core.files import values_hash
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.retrieval.data import training_data
from rar_pipeline.core.retrieval.fitting import fit_retriever, reusable_checkpoint
from rar_pipeline.core.retrieval.pairs import (
    CONFIGS,
    PAIRS_VERSION,
    AblationConfig,
    Pairs,
    build_pairs,
    no_train_pairs_reason,
    pair_leaks,
    read_left_out,
    represent_candidates,
    write_left_out,
)
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.checks import no_test_leakage_result, no_test_leakage_spec
from rar_pipeline.defs.io import (
    SUMMARY,
    ingested_tasks,
    markdown_table,
    read_input,
    read_pools,
    read_queries,
    samples_table,
    training_observer,
)
from rar_pipeline.defs.resources import (
    CorpusResource,
    MlflowResource,
    RetrieverResource,
    VLMResource,
)
from rar_pipeline.defs.resources.tracking_rules import frame_dataset, logged_model_name
from rar_pipeline.defs.staging import staged
from rar_pipeline.defs.versions import require_defined_version
from rar_pipeline.defs.workloads import step_tags


def _all(asset: dg.AssetsDefinition | str) -> dg.AssetDep:
    return dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping())


def _pairs_asset(config: AblationConfig, versions: dict[str, str]) -> dg.AssetsDefinition:
    deps = [_all(candidate_pool), _all(queries)]
    version = [PAIRS_VERSION]
    if config.enhanced_corpus:
        deps.append(_all(names.ENHANCED_CORPUS))
        version.append(versions["enhanced_corpus"])
    if config.enhanced_queries:
        deps.append(_all(names.ENHANCED_QUERIES))
        version.append(versions["enhanced_queries"])

    @dg.asset(
        name=names.per_config(names.TRAINING_PAIRS, config.name),
        op_tags=step_tags(names.TRAINING_PAIRS),
        group_name=names.RETRIEVAL_GROUP,
        code_version="+".join(version),
        deps=deps,
        kinds={"parquet"},
        tags={names.CONFIG_TAG: config.name},
        check_specs=[no_test_leakage_spec(names.per_config(names.TRAINING_PAIRS, config.name))],
    )
    @staged
    def training_pairs(
        context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
    ) -> dg.MaterializeResult:
        """Train and validation pairs of one ablation config (labels of train/val only)."""
        require_defined_version(context, vlm)
        qs, pools, enhanced_queries, enhanced_corpus = _read_inputs(context, corpus, config)
        candidates = {c.did: c for shard in pools.values() for c in shard}
        pairs = build_pairs(config, qs, candidates, enhanced_queries, enhanced_corpus)
        table = represent_candidates(config, pools, qs, enhanced_corpus)
        paths = corpus.artifacts()
        path = write_parquet(pairs.frame, paths.training_pairs(config.name))
        write_parquet(table, paths.training_candidates(config.name))
        report = write_left_out(pairs.left_out, paths.training_pairs_left_out(config.name))
        why_nothing = _say_what_was_left_out(context, pairs, report)
        head = pairs.frame.head(5)
        samples = zip(head["qid"], head["query_txt"], head["cand_txt"], strict=True)
        leaks = pair_leaks(pairs.frame, table, qs)  # the audit: what the builder let through
        return dg.MaterializeResult(
            metadata={
                SUMMARY: f"{len(pairs.frame)} pairs"
                + (
                    f", {n} left out as test labels"
                    if (n := pairs.counts["pairs_left_out"])
                    else ""
                ),
                **pairs.counts,
                "dagster/row_count": len(pairs.frame),
                "config": config.name,
                "candidates": len(table),
                "path": dg.MetadataValue.path(str(path)),
                "samples": samples_table(list(samples)),
                "left_out_report": dg.MetadataValue.path(str(report)),
                "left_out": _left_out_table(pairs.left_out),
                **why_nothing,
            },
            check_results=[no_test_leakage_result(leaks, left_out=len(pairs.left_out))],
        )

    return training_pairs


def _say_what_was_left_out(
    context: dg.AssetExecutionContext, pairs: Pairs, report: Path
) -> dict[str, str]:
    """Warn of what the builder left out; returns why nothing trains, if so, for metadata."""
    if len(pairs.left_out):
        context.log.warning(
            f"{pairs.counts['pairs_left_out']} pairs and "
            f"{pairs.counts['negatives_revealing_a_test_label']} hard negatives left out: each "
            f"would reveal a test label (a test query's words with its positive); see {report}"
        )
    if pairs.counts["pairs_train"]:
        return {}
    reason = no_train_pairs_reason(pairs.left_out, report)
    context.log.warning(reason)
    return {"nothing_to_train": reason}


def _left_out_table(left_out: pd.DataFrame, limit: int = 10) -> dg.MetadataValue:
    """The first left-out pairs and negatives, with the test query each would reveal."""
    columns = ["query_key", "did", "role", "test_qid", "reason"]
    rows = left_out[columns].head(limit).values.tolist()
    if len(left_out) > limit:
        rows.append([f"... {len(left_out) - limit} more", "", "", "", ""])
    return markdown_table(columns, rows)


def _read_inputs(
    context: dg.AssetExecutionContext, corpus: CorpusResource, config: AblationConfig
) -> tuple[list[Query], dict[str, list[Candidate]], dict | None, dict | None]:
    """What a config's pairs are built from.

    Returns:
        Queries of every ingested task, each pool's candidates, and the enhanced texts the
        config reads (`Query.key` -> text, did -> text; None where it reads none).
    """
    paths, layout = corpus.artifacts(), corpus.layout()
    tasks = ingested_tasks(context, corpus, "pairs")
    qs, pools = read_queries(corpus, tasks), read_pools(corpus)
    enhanced_queries = enhanced_corpus = None
    if config.enhanced_queries:
        enhanced_queries = {}
        for t in tasks:
            frame = read_input(paths.enhanced_queries(t), f"{names.ENHANCED_QUERIES}[{t}]")
            keys = (f"{s}/{q}" for s, q in zip(frame["split"], frame["qid"], strict=True))
            enhanced_queries.update(zip(keys, frame["enhanced_txt"], strict=True))
    if config.enhanced_corpus:
        enhanced_corpus = enhanced_corpus_texts(paths, list(layout.pools))
    return qs, pools, enhanced_queries, enhanced_corpus


def enhanced_corpus_texts(paths: ArtifactLayout, shards: list[str]) -> dict[str, str | None]:
    """The enhanced text of every candidate of the given shards, by did."""
    texts: dict[str, str | None] = {}
    for shard in shards:
        frame = read_input(paths.enhanced_corpus(shard), f"{names.ENHANCED_CORPUS}[{shard}]")
        texts.update(zip(frame["did"], frame["enhanced_txt"], strict=True))
    return texts


def _checkpoint_asset(
    config: AblationConfig,
    pairs: dg.AssetsDefinition,
    retriever_version: str,
    data_versions: dict[str, str],
) -> dg.AssetsDefinition:
    @dg.asset(
        name=names.per_config(names.RETRIEVER_CHECKPOINT, config.name),
        op_tags=step_tags(names.RETRIEVER_CHECKPOINT),
        group_name=names.RETRIEVAL_GROUP,
        # the pairs' version too: Dagster marks a child stale for its parent's new code
        # version only once the parent is rematerialized
        code_version=f"{retriever_version}+{data_versions['pairs']}",
        deps=[pairs],
        kinds={"pytorch", "safetensors", "mlflow"},
        tags={names.CONFIG_TAG: config.name},
        output_required=False,  # a corpus without train pairs has nothing to train
    )
    @staged
    def retriever_checkpoint(
        context: dg.AssetExecutionContext,
        corpus: CorpusResource,
        retriever: RetrieverResource,
        vlm: VLMResource,
        mlflow: MlflowResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
        """A retriever fine-tuned on one config's pairs until validation recall stops rising."""
        require_defined_version(context, vlm, retriever)
        paths, name = corpus.artifacts(), corpus.name
        pairs_frame = read_input(paths.training_pairs(config.name), pairs.key.to_user_string())
        data = training_data(
            pairs_frame,
            read_input(paths.training_candidates(config.name), pairs.key.to_user_string()),
            corpus.layout().root,
        )
        if not data.train:
            yield _nothing_to_train(context, paths, config.name)
            return
        encoder, options = retriever.create(paths.perception_cache), retriever.options()
        path, model = paths.checkpoint(config.name), f"rar-{name}-{config.name}"
        if (kept := reusable_checkpoint(path, encoder, data, options)) is not None:
            context.log.info(f"{path} was trained with these options on this data: kept")
            yield dg.MaterializeResult(
                metadata=_checkpoint_metadata(kept, path, model, "kept"),
                data_version=_checkpoint_version(kept),
            )
            return
        tags = {"corpus": name, "config": config.name, "dagster_run_id": context.run.run_id}
        with mlflow.start_run(f"train-{name}-{config.name}", tags=tags) as run:
            run.log_params(retriever.params() | data_versions)
            pairs_file = paths.training_pairs(config.name)
            dataset = frame_dataset(pairs_frame, pairs.key.to_user_string(), pairs_file)
            run.log_input(dataset, context="training")
            # the checkpoint, as MLflow 3 keeps a model: a logged model the run outputs
            model_id = run.create_logged_model(logged_model_name(model), retriever.params(),
                                               model_type="retriever")  # fmt: skip
            info = {"config": config.name, "corpus": name, "params": retriever.params(),
                    "data_versions": data_versions, "mlflow_run_id": run.run_id,
                    "mlflow_run_url": run.run_url, "mlflow_model_id": model_id}  # fmt: skip
            with training_observer(run, f"train {config.name}", options) as observe:
                manifest = fit_retriever(encoder, data, options, path,
                                         paths.training_state(config.name), info, observe,
                                         context.log.info)  # fmt: skip
            best = {k: v for k, v in manifest.items() if k.startswith("best_")}
            run.log_metrics(best, model_id=model_id)
            run.log_model_artifacts(model_id, path)
            run.finalize_logged_model(model_id)
            run.log_dict({"rows": pairs_frame.head(50).to_dict("records")}, "pairs_sample.json")
            version = run.register_model(model, model_id=model_id)
        metadata = _checkpoint_metadata(manifest, path, model, version)
        if run.journal is not None:
            metadata["tracking"] = run.journal.note()
        yield dg.MaterializeResult(metadata=metadata, data_version=_checkpoint_version(manifest))

    return retriever_checkpoint


def _nothing_to_train(
    context: dg.AssetExecutionContext, paths: ArtifactLayout, config: str
) -> dg.AssetObservation:
    """No train pairs: say why, and take away a checkpoint an earlier run trained.

    That checkpoint was trained on data this corpus no longer has (in the worst case on
    pairs now known to reveal test labels): left in place, the indexes, the evaluation and
    the search would serve it as this config's. Without it they use the untrained base
    encoder and say so (`<config>@untrained`). Its MLflow run and model version stay.
    """
    left_out = paths.training_pairs_left_out(config)
    reason = no_train_pairs_reason(read_left_out(left_out), left_out)
    context.log.warning(f"{reason}; nothing to train, no checkpoint written")
    metadata: dict[str, Any] = {SUMMARY: f"skipped: {reason}", "skipped": reason}
    stale = [p for p in (paths.checkpoint(config), paths.training_state(config)) if p.exists()]
    for path in stale:
        shutil.rmtree(path)
    if stale:
        removed = ", ".join(map(str, stale))
        context.log.warning(f"removed {removed}: trained by an earlier run on other data")
        metadata["removed"] = removed
    return dg.AssetObservation(asset_key=context.asset_key, metadata=metadata)


def _checkpoint_version(manifest: dict) -> dg.DataVersion:
    """The checkpoint's files: a kept (identical) checkpoint leaves its indexes fresh."""
    return dg.DataVersion(values_hash(sorted(manifest["files"].items())))


def _checkpoint_metadata(manifest: dict, path: Path, model: str, version: str) -> dict[str, Any]:
    """What the UI shows for a checkpoint (`version` "kept": reused, not retrained)."""
    recall = next(k for k in manifest if k.startswith("best_val_recall_at_"))
    url = manifest.get("mlflow_run_url")
    registered = f"{model} v{version}" if version != "kept" else f"{model} (kept)"
    return {
        SUMMARY: f"val R@{recall.rsplit('_', 1)[-1]} {manifest[recall]:.3f} (epoch "
        f"{manifest['best_epoch']}), {manifest['steps']} steps, {registered}",
        recall: manifest[recall],
        **{k: manifest[k] for k in ("best_epoch", "epochs", "steps", "stopped")},
        "learning_curve": markdown_table(
            ["epoch", "step", "val recall"],
            [[h["epoch"], h["step"], f"{h['recall']:.3f}"] for h in manifest["history"]],
        ),
        "path": dg.MetadataValue.path(str(path)),
        "mlflow_run": dg.MetadataValue.url(url) if url else manifest["mlflow_run_id"],
        "registered_model": registered,
    }


def build_retrieval_assets(
    vlm: VLMResource, retriever: RetrieverResource
) -> list[dg.AssetsDefinition]:
    """The retrieval assets for a VLM and a retriever (their versions shape the lineage)."""
    versions = vlm.code_versions()
    built: list[dg.AssetsDefinition] = []
    for config in CONFIGS.values():
        pairs = _pairs_asset(config, versions)
        seen = {"vlm_backend": vlm.backend, "vlm_model": vlm.resolved_model_id()}
        seen["pairs"] = pairs.code_versions_by_key[pairs.key] or ""
        built += [pairs, _checkpoint_asset(config, pairs, retriever.code_version(), seen)]
    return built
