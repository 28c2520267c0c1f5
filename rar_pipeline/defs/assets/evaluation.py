"""`retrieval_eval`: the ablation on the test split, reported where each kind of user looks.

Reads every config's index, the test queries and their enhanced forms; writes TREC run
files and qrels, per-query figures, report.json and the chart (`core.evaluation`); logs an
MLflow evaluation run per config, linked to its training run; shows the table and the
chart in the asset's metadata.
"""

import base64
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field

from rar_pipeline.core import names
from rar_pipeline.core.evaluation.consistency import ConfigInputs, inconsistencies
from rar_pipeline.core.evaluation.evaluate import Evaluation, evaluate_ablation, load_test_queries
from rar_pipeline.core.evaluation.metrics import KS
from rar_pipeline.core.evaluation.report import macro_recall, markdown, task_level
from rar_pipeline.core.index.ann import DEFAULT_PLAN
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.retrieval.pairs import CONFIGS
from rar_pipeline.defs.assets.corpus import queries as queries_asset
from rar_pipeline.defs.checks import recall_floor_result, recall_floor_spec
from rar_pipeline.defs.drift import latest_code_version
from rar_pipeline.defs.io import SUMMARY, ingested_tasks, input_file, progress_bar
from rar_pipeline.defs.resources import (
    CorpusResource,
    LanceDBResource,
    MlflowResource,
    RetrieverResource,
    VLMResource,
)
from rar_pipeline.defs.staging import staged
from rar_pipeline.defs.versions import require_defined_version
from rar_pipeline.defs.workloads import step_tags

EVAL_VERSION = "eval-1"


class EvalConfig(dg.Config):
    """Which retrieval setting(s) to evaluate."""

    setting: Literal["local", "global", "both"] = Field(
        default="local",
        description="local: each task's queries against the task's own pool (UniIR's local "
        "setting); global: against the union pool; both.",
    )
    recall_floor: float = Field(
        default=0.05,
        description="The recall_floor check fails when a config's macro Recall@5 (over the "
        "tasks, in the first setting) is under this: an index embedded by the wrong model, "
        "a broken checkpoint.",
    )


def _labels(paths: ArtifactLayout, tasks: list[str]) -> dict[str, list[list[str]]]:
    """Every query's positives, per task (which pool is a task's own)."""
    return {
        t: [list(p) for p in pd.read_parquet(input_file(paths, names.QUERIES, t))["pos_cand_list"]]
        for t in tasks
    }


def _test_queries(paths: ArtifactLayout, tasks: list[str]) -> pd.DataFrame:
    for task in tasks:
        input_file(paths, names.ENHANCED_QUERIES, task)
    return load_test_queries(paths, tasks)


def _chart_markdown(path: Path) -> dg.MetadataValue:
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![ablation](data:image/png;base64,{data})")


def _log_runs(
    mlflow: MlflowResource,
    evaluation: Evaluation,
    paths: ArtifactLayout,
    context: dg.AssetExecutionContext,
    corpus_name: str,
    params: dict[str, Any],
    trained: dict[str, dict | None],
) -> dict[str, str]:
    """An MLflow evaluation run per config; returns config -> run link (or id)."""
    links = {}
    for config in INDEXED.values():
        rows = [r for r in evaluation.rows if r["config"] == config.name]
        if not rows:
            continue
        manifest = trained.get(config.retriever.name) or {}
        tags = {
            "corpus": corpus_name,
            "config": config.name,
            "aligned": str(config.aligned).lower(),
            "dagster_run_id": context.run.run_id,
            "training_run_id": manifest.get("mlflow_run_id", "none (untrained)"),
        }
        if manifest.get("mlflow_run_url"):
            tags["mlflow.note.content"] = (
                f"Evaluation of `{config.name}` ({config.retriever.name} retriever, "
                f"{config.representation.name} representations). Trained in "
                f"[{manifest['mlflow_run_id']}]({manifest['mlflow_run_url']})."
            )
        # the logged model evaluated (none for the base encoder, or a checkpoint older than
        # logged models); its page shows the figures of its own representation's evaluation
        # (inference-only evaluates the `none` model on other inputs: linked, no figures)
        model_id = manifest.get("mlflow_model_id")
        with mlflow.start_run(f"eval-{corpus_name}-{config.name}", tags=tags) as run:
            if model_id:
                run.log_input(model_id=model_id)
            run.log_params(
                {
                    **params,
                    "config": config.name,
                    "retriever_config": config.retriever.name,
                    "representation": config.representation.name,
                }
            )
            metrics = {}
            for r in rows:
                for k in KS:
                    for m in (f"recall_at_{k}", f"trec_recall_at_{k}"):
                        metrics[f"{r['setting']}/{r['task']}/{r['query_type']}/{m}"] = r[m]
            for setting in {r["setting"] for r in rows}:
                for k in KS:
                    mean = macro_recall(rows, setting, k)[config.name]
                    metrics[f"{setting}/macro/recall_at_{k}"] = mean
            run.log_metrics(metrics, model_id=model_id if config.aligned else None)
            for setting in {r["setting"] for r in rows}:
                folder = paths.run_file(config.name, "x", setting).parent
                run.log_artifacts(folder, f"runs/{setting}")
            if paths.evaluation_chart.is_file():
                run.log_artifact(paths.evaluation_chart)
            run.log_artifact(paths.evaluation_report)
            links[config.name] = (
                run.journal.note() if run.journal is not None else run.run_url or run.run_id
            )
    return links


def _mixed_inputs(
    instance: dg.DagsterInstance,
    lancedb: LanceDBResource,
    references: dict[str, str],
    checkpoints: dict[str, dg.AssetsDefinition],
    enhanced_corpus: str,
) -> list[str]:
    """Every way the indexed configs were not all built from the current enhanced data."""
    problems, tables = [], set(lancedb.table_names())
    for config in INDEXED.values():
        checkpoint = checkpoints[config.retriever.name]
        built = (
            lancedb.peek(config.table, ["retriever", "prompt_version"]).to_dict("records")
            if config.table in tables
            else []
        )  # no table: the evaluation names the index to materialize
        row = built[0] if built else {}
        problems += inconsistencies(ConfigInputs(
            config.index_asset, checkpoint.key.to_user_string(), references[config.retriever.name],
            latest_code_version(instance, checkpoint.key),
            checkpoint.code_versions_by_key[checkpoint.key] or "",
            row.get("retriever"), row.get("prompt_version"),
            enhanced_corpus if config.representation.enhanced_corpus else None,
        ))  # fmt: skip
    return problems


def build_evaluation_asset(
    indexes: list[dg.AssetsDefinition],
    checkpoints: dict[str, dg.AssetsDefinition],
    versions: dict[str, str],
    model: dict[str, str],
) -> dg.AssetsDefinition:
    """`retrieval_eval` over the given index assets (`checkpoints`: retriever config -> its)."""
    all_partitions = dg.AllPartitionMapping()

    @dg.asset(
        name=names.RETRIEVAL_EVAL,
        op_tags=step_tags(names.RETRIEVAL_EVAL),
        group_name=names.EVALUATION_GROUP,
        code_version="+".join(
            [EVAL_VERSION, versions["enhanced_queries"], versions["enhanced_corpus"]]
        ),
        deps=[
            *indexes,
            dg.AssetDep(queries_asset, partition_mapping=all_partitions),
            dg.AssetDep(names.ENHANCED_QUERIES, partition_mapping=all_partitions),
        ],
        kinds={"lancedb", "mlflow"},
        check_specs=[recall_floor_spec(names.RETRIEVAL_EVAL)],
    )
    @staged
    def retrieval_eval(
        context: dg.AssetExecutionContext,
        config: EvalConfig,
        corpus: CorpusResource,
        retriever: RetrieverResource,
        vlm: VLMResource,
        lancedb: LanceDBResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        """Recall@1/5/10 per task and query type for the five configs, with significance."""
        require_defined_version(context, vlm, retriever)
        tasks = ingested_tasks(context, corpus, "evaluating")
        paths, layout = corpus.artifacts(), corpus.layout()
        queries = _test_queries(paths, tasks)
        pools = {
            s: pq.read_table(input_file(paths, names.CANDIDATE_POOL, s), columns=["did"])
            .column("did")
            .to_pylist()
            for s in layout.pools
        }
        encoders, references, trained = {}, {}, {}
        for name in CONFIGS:
            encoders[name], references[name], trained[name] = retriever.open(paths, name)
        mixed = _mixed_inputs(context.instance, lancedb, references, checkpoints,
                              versions["enhanced_corpus"])  # fmt: skip
        if mixed:
            raise dg.Failure(
                "the configs were not all built from the current enhanced data, so the "
                "evaluation would compare unlike with like; bring them up to date first "
                "(`rar refresh --include-training`):\n- " + "\n- ".join(mixed)
            )
        settings = ("local", "global") if config.setting == "both" else (config.setting,)
        params = {
            **{f"prompt.{n}": p.version for n, p in vlm.options().prompt_set().items()},
            **{f"version.{k}": v for k, v in versions.items()},
            **model,
            "retriever_version": retriever.code_version(),
            **{f"retriever.{k}": v for k, v in references.items()},
            **{f"table_version.{c}": lancedb.table_version(c) for c in INDEXED},
            "eval_version": EVAL_VERSION,
        }
        with progress_bar("evaluate", len(queries) * len(INDEXED) * len(settings)) as update:
            evaluation = evaluate_ablation(
                lancedb, list(INDEXED.values()), encoders, queries, _labels(paths, tasks),
                pools, paths, settings=settings, root=layout.root, plan=DEFAULT_PLAN,
                info={"corpus": corpus.name, **params}, progress=update,
            )  # fmt: skip
        links = _log_runs(mlflow, evaluation, paths, context, corpus.name, params, trained)
        metadata = _metadata(evaluation, queries, settings, paths, links)
        macro = macro_recall(evaluation.rows, settings[0])
        return dg.MaterializeResult(
            metadata=metadata, check_results=[recall_floor_result(macro, config.recall_floor)]
        )

    return retrieval_eval


def _metadata(
    evaluation: Evaluation,
    queries: Any,
    settings: tuple[str, ...],
    paths: ArtifactLayout,
    links: dict[str, str],
) -> dict[str, Any]:
    """What the UI shows for the evaluation: the table, chart, p-values and headline figures."""
    rows = evaluation.rows
    p_values = {
        f"{r['setting']}/{r['task']}/{r['query_type']}: full vs {r['config']}": r["p_value"]
        for r in rows
        if r["p_value"] is not None
    }
    metadata: dict[str, Any] = {
        SUMMARY: f"{len(queries)} test queries x {len(INDEXED)} configs ({', '.join(settings)})",
        "ablation": dg.MetadataValue.md(markdown(rows)),
        "test_queries": len(queries),
        "queries_without_vector": dg.MetadataValue.json(evaluation.unembedded),
        "settings": ", ".join(settings),
        "pools": dg.MetadataValue.json(evaluation.pools),
        "p_values": dg.MetadataValue.json(p_values),
        "report": dg.MetadataValue.path(str(paths.evaluation_report)),
        "mlflow_runs": dg.MetadataValue.md(
            "\n".join(f"- {c}: {link}" for c, link in links.items())
        ),
    }
    if paths.evaluation_chart.is_file():
        metadata["chart"] = _chart_markdown(paths.evaluation_chart)
    for r in task_level(rows):
        if r["setting"] == settings[0] and r["config"] in ("none", "full", "inference-only"):
            metadata[f"{r['task']} {r['config']} R@5"] = round(r["recall_at_5"], 4)
    return metadata
