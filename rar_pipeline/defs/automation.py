"""What runs by itself: the assets' declarative automation conditions, in one table.

Nothing runs by itself until the automation sensors are on. Both ship stopped; turn them
on in the UI (Automation) or with `dagster sensor start automation_enhancement` and
`dagster sensor start automation_index`. Their runs carry the `rar/workload` tag the
instance's concurrency limits read (vlm and index). With them on:

- `refresh` on corpus_captions, enhanced_corpus and enhanced_queries: a new or re-ingested
  shard or task is enhanced and merged, and a prompt edit re-runs every partition of the
  assets it changes (the cache recomputes only the items whose prompt changed).
- `refresh` on every lancedb_index_*: new candidates are appended to each config's index,
  embedded by its current checkpoint.
- `refresh` on retrieval_eval: the evaluation follows the indexes.
- `fit_once` on offline_captioner: fitted when missing or when its code changes, not on
  every new shard (which would re-run every shard's captions).
- nothing on training_pairs_* and retriever_checkpoint_*: retraining costs GPU hours, so
  it shows as stale and waits for a person.
- nothing on candidate_pool and queries: `corpus_files_sensor` registers new files as
  partitions and ingests them.

`refresh` is `AutomationCondition.eager()` that also fires on a code-version change (a
prompt edit), so the asset's Automation tab says which of the two requested a partition;
like `rar run`, it waits while a blocking check upstream has failed (`defs/checks.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.defs.jobs import INDEX_RUN, VLM_RUN

AC = dg.AutomationCondition


def refresh() -> dg.AutomationCondition:
    """Run when new, when an input updated, or when the code version changed."""
    trigger = (
        AC.newly_missing().with_label("newly missing")
        | AC.any_deps_updated().with_label("an input updated")
        | AC.code_version_changed().with_label("code version changed (a prompt edit?)")
    )
    return (
        trigger.since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & AC.all_deps_blocking_checks_passed().with_label("no failed blocking check upstream")
    ).with_label("refresh")


def fit_once() -> dg.AutomationCondition:
    """Run when missing or when the code version changed, never because an input updated."""
    trigger = AC.newly_missing() | AC.code_version_changed().with_label("code version changed")
    return (
        trigger.since_last_handled() & ~AC.any_deps_in_progress() & ~AC.in_progress()
    ).with_label("fit once")


# asset name (or name prefix ending in "_") -> its condition; absent: nothing automatic
CONDITIONS: dict[str, Callable[[], dg.AutomationCondition]] = {
    names.OFFLINE_CAPTIONER: fit_once,
    names.CORPUS_CAPTIONS: refresh,
    names.ENHANCED_CORPUS: refresh,
    names.ENHANCED_QUERIES: refresh,
    names.LANCEDB_INDEX: refresh,
    names.RETRIEVAL_EVAL: refresh,
}


def condition_for(name: str) -> dg.AutomationCondition | None:
    """The automation condition of the asset called `name` (None: nothing automatic)."""
    for key, make in CONDITIONS.items():
        if name == key or (key.endswith("_") and name.startswith(key)):
            return make()
    return None


def with_automation(assets: Iterable[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The assets with their conditions from `CONDITIONS` attached."""

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = condition_for(spec.key.path[-1])
        return (
            spec if condition is None else spec.replace_attributes(automation_condition=condition)
        )

    return list(dg.map_asset_specs(attach, list(assets)))


# Two sensors instead of Dagster's default one, so that their runs carry the workload tag
# the instance limits (dagster_home/dagster.yaml): VLM-heavy runs apart from index runs.
automation_enhancement = dg.AutomationConditionSensorDefinition(
    "automation_enhancement",
    target=dg.AssetSelection.groups(names.ENHANCEMENT_GROUP),
    run_tags=VLM_RUN,
    description="Evaluates the enhancement assets' automation conditions (captions, merges, "
    "query rewrites); its runs are tagged rar/workload=vlm.",
)
automation_index = dg.AutomationConditionSensorDefinition(
    "automation_index",
    target=dg.AssetSelection.groups(names.INDEX_GROUP, names.EVALUATION_GROUP),
    run_tags=INDEX_RUN,
    description="Evaluates the index and evaluation assets' automation conditions; its runs "
    "are tagged rar/workload=index.",
)
SENSORS = [automation_enhancement, automation_index]
