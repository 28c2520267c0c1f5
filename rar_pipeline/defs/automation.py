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
  it shows as outdated and waits for a person (`rar refresh --include-training`, or the
  `refresh` job with `include_training`); what reads them waits too.
- nothing on candidate_pool and queries: `corpus_files_sensor` registers new files as
  partitions and ingests them.

Both conditions react to the state, not only to events a sensor may have missed: an asset
is outdated when its code version changed since it was last built (seen by the sensor) or
when its `current_version` check failed on its latest materialization (the check that
`code_version_drift_sensor` runs after every reload), so a sensor turned on after a prompt
edit still requests the outdated partitions on its first tick. An asset waits while
anything upstream of it, at any distance, is outdated, in progress or about to be
requested, so the indexes and the evaluation run once, after everything they read is
fresh; and, like `rar run`, while a blocking check upstream has failed (`defs/checks.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.defs.drift import check_keys
from rar_pipeline.defs.jobs import INDEX_RUN, VLM_RUN

AC = dg.AutomationCondition


def outdated(checks: dg.AssetSelection) -> dg.AutomationCondition:
    """State: built by an older code version than the definitions hold now.

    Either the sensor saw the code version change since the last materialization, or the
    asset's `current_version` check (one of `checks`) failed on its latest materialization.
    """
    seen = AC.code_version_changed().since(AC.newly_updated())
    checked = AC.any_checks_match(AC.check_failed()).allow(checks)
    return (seen | checked).with_label("built by an older code version")


def upstream_busy(
    checks: dg.AssetSelection, depth: int, together: Iterable[dg.AssetKey] = ()
) -> dg.AutomationCondition:
    """Something upstream, up to `depth` assets away, is outdated, running or requested.

    A direct input in `together` (partitioned like the asset, so requested in the same run
    and run first) may be requested with it; it only must not be running, or outdated and
    left so.
    """
    busy = AC.in_progress() | AC.will_be_requested() | outdated(checks)
    further = AC.any_deps_match(busy)
    for _ in range(depth - 2):
        further = AC.any_deps_match(busy | further)
    direct = busy | further if depth > 1 else busy
    condition = AC.any_deps_match(direct)
    if together:
        same = dg.AssetSelection.assets(*together)
        in_run = AC.in_progress() | (outdated(checks) & ~AC.will_be_requested())
        condition = AC.any_deps_match(direct).ignore(same) | AC.any_deps_match(
            in_run | further if depth > 1 else in_run
        ).allow(same)
    return condition.with_label(
        "an upstream asset is outdated, in progress or requested (training is manual: "
        "retrain an outdated checkpoint to let its index and the evaluation run)"
    )


def _ready(
    checks: dg.AssetSelection, depth: int, together: Iterable[dg.AssetKey] = ()
) -> dg.AutomationCondition:
    """Nothing upstream missing, busy or blocked, and not running itself."""
    waits = ~AC.any_deps_missing() & ~AC.in_progress()
    if depth > 0:
        waits = waits & ~upstream_busy(checks, depth, together)
    return waits & AC.all_deps_blocking_checks_passed().with_label(
        "no failed blocking check upstream"
    )


def _became_outdated(checks: dg.AssetSelection) -> dg.AutomationCondition:
    """Outdated since the last request or materialization (a first tick counts too)."""
    return (
        outdated(checks)
        .newly_true()
        .since(AC.newly_requested() | AC.newly_updated())
        .with_label("outdated (a prompt or setting changed)")
    )


def refresh(
    checks: dg.AssetSelection, depth: int, together: Iterable[dg.AssetKey] = ()
) -> dg.AutomationCondition:
    """Run when new, when an input updated, or when outdated; once upstream is settled."""
    events = (
        AC.newly_missing().with_label("newly missing")
        | AC.any_deps_updated().with_label("an input updated")
    ).since_last_handled()
    return ((events | _became_outdated(checks)) & _ready(checks, depth, together)).with_label(
        "refresh"
    )


def fit_once(
    checks: dg.AssetSelection, depth: int, together: Iterable[dg.AssetKey] = ()
) -> dg.AutomationCondition:
    """Run when missing or outdated, never because an input updated."""
    return (
        (AC.newly_missing().since_last_handled() | _became_outdated(checks))
        & _ready(checks, depth, together)
    ).with_label("fit once")


# asset name (or name prefix ending in "_") -> its condition; absent: nothing automatic
Condition = Callable[[dg.AssetSelection, int, Iterable[dg.AssetKey]], dg.AutomationCondition]
CONDITIONS: dict[str, Condition] = {
    names.OFFLINE_CAPTIONER: fit_once,
    names.CORPUS_CAPTIONS: refresh,
    names.ENHANCED_CORPUS: refresh,
    names.ENHANCED_QUERIES: refresh,
    names.LANCEDB_INDEX: refresh,
    names.RETRIEVAL_EVAL: refresh,
}


def condition_for(
    name: str, checks: dg.AssetSelection, depth: int, together: Iterable[dg.AssetKey] = ()
) -> dg.AutomationCondition | None:
    """The automation condition of the asset called `name` (None: nothing automatic).

    Args:
        name: the asset's name.
        checks: the graph's `current_version` checks.
        depth: how many assets up it looks for outdated or running work.
        together: its direct inputs partitioned like it (requested in the same run).
    """
    for key, make in CONDITIONS.items():
        if name == key or (key.endswith("_") and name.startswith(key)):
            return make(checks, depth, together)
    return None


# How far up an asset looks for work in progress or requested: from an index, the merged
# corpus, its captions and the ingested shard. Outdatedness needs no more: code versions
# chain along the lineage (a prompt's version is in every downstream code version), so an
# outdated asset's direct readers are outdated too. Each step up costs evaluation time.
LOOKS_UP = 3


def _shape(
    assets: list[dg.AssetsDefinition],
) -> tuple[Mapping[dg.AssetKey, int], Mapping[dg.AssetKey, set[dg.AssetKey]]]:
    """How far each asset looks up (`LOOKS_UP` at most) and its inputs partitioned like it."""
    deps = {s.key: [d.asset_key for d in s.deps] for a in assets for s in a.specs}
    partitions = {s.key: a.partitions_def for a in assets for s in a.specs}

    @cache
    def depth(key: dg.AssetKey) -> int:
        return max((1 + depth(d) for d in deps.get(key, ()) if d in deps), default=0)

    together = {
        key: {d for d in ds if partitions[key] is not None and partitions.get(d) == partitions[key]}
        for key, ds in deps.items()
    }
    return {key: min(depth(key), LOOKS_UP) for key in deps}, together


def with_automation(assets: Iterable[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The assets with their conditions from `CONDITIONS` attached."""
    assets = list(assets)
    checks = dg.AssetSelection.checks(*check_keys(assets))
    depths, together = _shape(assets)

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        key = spec.key
        condition = condition_for(key.path[-1], checks, depths[key], together[key])
        return (
            spec if condition is None else spec.replace_attributes(automation_condition=condition)
        )

    return list(dg.map_asset_specs(attach, assets))


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
