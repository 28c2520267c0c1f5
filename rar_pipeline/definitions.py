"""The one `Definitions` of the project, loaded by workspace.yaml and `dagster dev`.

Resources come from the settings (`core.settings`: environment, then project defaults):
by default the demo corpus in data/demo, outputs in artifacts/, MLflow in mlruns/, all
under the working directory, and the offline VLM. The VLM settings fix the enhancement
assets' code versions. The corpus names the namespace every key and partition is in
(`defs.namespace`): `demo/corpus_captions` for the demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.assets.demo import demo_caption_accuracy, demo_corpus
from rar_pipeline.defs.assets.enhancement import build_enhancement_assets
from rar_pipeline.defs.assets.evaluation import build_evaluation_asset
from rar_pipeline.defs.assets.index import build_index_assets
from rar_pipeline.defs.assets.retrieval import build_retrieval_assets
from rar_pipeline.defs.automation import SENSORS as AUTOMATION_SENSORS
from rar_pipeline.defs.automation import with_automation
from rar_pipeline.defs.drift import build_drift_sensor, current_version_checks
from rar_pipeline.defs.executor import executor_for
from rar_pipeline.defs.jobs import JOBS
from rar_pipeline.defs.maintenance import (
    index_maintenance_sensor,
    maintain_indexes_job,
    weekly_index_compaction,
)
from rar_pipeline.defs.namespace import in_namespace, namespace_of
from rar_pipeline.defs.refresh import build_refresh_job
from rar_pipeline.defs.resources import (
    CorpusResource,
    RetrieverResource,
    VLMResource,
    resources_from_settings,
)
from rar_pipeline.defs.schedules import nightly_pool_revalidation
from rar_pipeline.defs.sensors import corpus_files_sensor


def build_assets(
    vlm: VLMResource, retriever: RetrieverResource | None = None, namespace: str = ""
) -> list[dg.AssetsDefinition]:
    """Every asset of the graph for a VLM and a retriever, in declaration order.

    Each carries its automation condition (`defs.automation`). With a `namespace` (a
    corpus', `defs.namespace`), every key and partition is in it; stage by stage, since
    later stages read the earlier ones' final keys (an index, its checkpoint's).
    """

    def placed(stage: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
        return in_namespace(stage, namespace)

    retrieval = placed(build_retrieval_assets(vlm, retriever or RetrieverResource()))
    checkpoints = {
        a.key.path[-1].removeprefix(names.RETRIEVER_CHECKPOINT): a
        for a in retrieval
        if a.key.path[-1].startswith(names.RETRIEVER_CHECKPOINT)
    }
    versions = vlm.code_versions()
    model = {"vlm_backend": vlm.backend, "vlm_model": vlm.resolved_model_id()}
    indexes = placed(
        build_index_assets(checkpoints, versions, f"{vlm.backend}/{model['vlm_model']}")
    )
    return with_automation(
        [
            *placed([demo_corpus, candidate_pool, queries, *build_enhancement_assets(vlm)]),
            *retrieval,
            *indexes,
            *placed([build_evaluation_asset(indexes, checkpoints, versions, model)]),
            *placed([demo_caption_accuracy]),
        ]
    )


def build_definitions(
    resources: dict[str, Any] | None = None, executor: dg.ExecutorDefinition | None = None
) -> dg.Definitions:
    """The project's definitions from the settings; `resources` and `executor` replace theirs.

    The executor is Dagster's default unless a Celery broker is set (`defs.executor`).
    """
    if resources is None:
        settings = load_settings()
        resources = resources_from_settings(settings)
        executor = executor or executor_for(settings.cluster)
    vlm = resources.get("vlm") or VLMResource()
    corpus = resources.get("corpus")
    namespace = namespace_of(corpus.name) if isinstance(corpus, CorpusResource) else ""
    assets = build_assets(vlm, resources.get("retriever"), namespace)
    return dg.Definitions(
        assets=assets,
        asset_checks=current_version_checks(assets, vlm.options().prompt_set()),
        jobs=[*JOBS, build_refresh_job(assets), maintain_indexes_job],
        sensors=[
            corpus_files_sensor,
            *AUTOMATION_SENSORS,
            build_drift_sensor(assets),
            index_maintenance_sensor,
        ],
        schedules=[nightly_pool_revalidation, weekly_index_compaction],
        resources=resources,
        executor=executor,
    )


def definitions_for(data_root: str) -> dg.Definitions:
    """The definitions of the corpus at `data_root`: one code location of `rar ui`."""
    settings = load_settings(data_root=data_root)
    return build_definitions(resources_from_settings(settings), executor_for(settings.cluster))


defs = build_definitions()
