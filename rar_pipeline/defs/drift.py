"""Code-version drift: which partitions were built by older code than the definitions hold.

Edit a prompt (or the VLM, its sampling, the retriever) and every asset whose code version
it feeds is out of date, but Dagster's UI marks that only in one partition's detail pane.
So every asset with a code version gets a `current_version` check (WARN) that reads the
latest materialization of each of its partitions from the event log and fails, listing
the partitions to backfill and which prompts changed, until they are rebuilt. The asset
catalog and the asset's Checks tab then show it where people look.

The check reads the event log only (no data, no model), so it stays out of the
materialization jobs. `code_version_drift_sensor` (on by default: it launches nothing but
these checks) runs them after a code location reload changed a code version and after the
assets were materialized again, once no other run is in flight.
"""

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.enhance.prompts import PROMPTS, PromptSpec

CURRENT_VERSION = "current_version"
PROMPT_VERSIONS = "prompt_versions"  # materialization metadata: prompt name -> version
CODE_VERSION_TAG = "dagster/code_version"  # Dagster's tag on every materialization
SHOWN = 50  # partitions listed by name in the check's metadata


@dataclass(frozen=True)
class Built:
    """What one partition's latest materialization was built with."""

    code_version: str | None
    prompts: Mapping[str, str]


def prompt_metadata(prompts: Iterable[PromptSpec]) -> dict[str, dg.MetadataValue]:
    """Materialization metadata recording the version of each prompt an asset used."""
    return {PROMPT_VERSIONS: dg.MetadataValue.json({p.name: p.version for p in prompts})}


def changed_prompts(built: Iterable[Built], prompts: Mapping[str, PromptSpec]) -> list[str]:
    """`name: old -> new` for each prompt some partition was built with an older version of.

    A prompt overridden in a prompts file says where: `name (prompts.toml:3): old -> new`.
    """
    changes = {
        (name, old, prompts[name])
        for b in built
        for name, old in b.prompts.items()
        if name in prompts and prompts[name].version != old
    }
    return [
        f"{name}{f' ({new.source})' if new.source else ''}: {old} -> {new.version}"
        for name, old, new in sorted(changes, key=lambda c: (c[0], c[1]))
    ]


def current_version_result(
    built: Mapping[str | None, Built],
    current: str,
    asset: str,
    prompts: Mapping[str, PromptSpec] = PROMPTS,
) -> dg.AssetCheckResult:
    """Pass when every materialized partition was built with the `current` code version.

    Args:
        built: partition (None for an unpartitioned asset) -> its latest materialization.
        current: the asset's code version in the definitions now.
        asset: the asset's name, for the backfill hint.
        prompts: the prompts in force (the definitions' prompts file over the shipped ones).
    """
    outdated = sorted((p for p, b in built.items() if b.code_version != current), key=str)
    metadata: dict[str, object] = {
        "current_code_version": current,
        "materialized": len(built),
        "outdated": len(outdated),
        "built_with": dg.MetadataValue.json(
            dict(Counter(b.code_version or "(none)" for b in built.values()))
        ),
    }
    if outdated:
        changes = changed_prompts((built[p] for p in outdated), prompts)
        named = [p for p in outdated if p is not None]
        metadata |= {
            "changed_prompts": ", ".join(changes) or "none (the backend, model or code changed)",
            "outdated_partitions": ", ".join(named[:SHOWN])
            + (f" and {len(named) - SHOWN} more" if len(named) > SHOWN else ""),
            "to_backfill": (
                f"launch the `{names.REFRESH_JOB}` job (Jobs > {names.REFRESH_JOB} > Launch "
                "run; include_training: true retrains too): one backfill of the outdated "
                "partitions and what reads them, or `rar refresh [--include-training]` from "
                f"a shell, or turn on the automation sensors; this asset alone: "
                f"{names.materialize(asset)} (Materialize > Backfill)"
            ),
        }
    return dg.AssetCheckResult(
        check_name=CURRENT_VERSION,
        passed=not outdated,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{len(outdated)} of {len(built)} materialized partitions were built by older code"
            if outdated
            else "every materialized partition was built by the current code"
        ),
        metadata=metadata,
    )


def _built(record: dg.EventLogRecord) -> Built:
    materialization = record.asset_materialization
    assert materialization is not None
    prompts = materialization.metadata.get(PROMPT_VERSIONS)
    return Built(
        code_version=materialization.tags.get(CODE_VERSION_TAG),
        prompts=dict(prompts.value) if prompts is not None else {},  # type: ignore[arg-type]
    )


def latest_code_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    """The code version of an unpartitioned asset's latest materialization (None: none)."""
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event is not None else None
    return materialization.tags.get(CODE_VERSION_TAG) if materialization is not None else None


def built_versions(
    instance: dg.DagsterInstance, asset: dg.AssetsDefinition, batch: int = 500
) -> dict[str | None, Built]:
    """The latest materialization of each current partition of `asset` (None: unpartitioned)."""
    key = asset.key
    if asset.partitions_def is None:
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            return {}
        record = dg.EventLogRecord(storage_id=0, event_log_entry=event)
        return {None: _built(record)}
    partitions = set(asset.partitions_def.get_partition_keys(dynamic_partitions_store=instance))
    latest = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions
    )
    ids = sorted(latest.values())
    out: dict[str | None, Built] = {}
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
        ).records
        out |= {r.partition_key: _built(r) for r in records}
    return out


def current_version_check(
    asset: dg.AssetsDefinition, prompts: Mapping[str, PromptSpec] = PROMPTS
) -> dg.AssetChecksDefinition:
    """The `current_version` check of one asset (which must have a code version)."""
    name = asset.key.to_user_string()
    current = asset.code_versions_by_key[asset.key]
    assert current is not None, f"{name} has no code version"

    @dg.asset_check(
        asset=asset.key,
        name=CURRENT_VERSION,
        description="Every materialized partition was built by the current code version "
        "(prompts, VLM backend and model, sampling, retriever). Fails listing the "
        "partitions to backfill and the prompts that changed.",
    )
    def _current_version(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        built = built_versions(context.instance, asset)
        return current_version_result(built, current, name, prompts)

    return _current_version


def versioned(assets: Iterable[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The single-asset definitions that have a code version: those the checks cover."""
    return [a for a in assets if len(a.keys) == 1 and a.code_versions_by_key.get(a.key)]


def current_version_checks(
    assets: Iterable[dg.AssetsDefinition], prompts: Mapping[str, PromptSpec] = PROMPTS
) -> list[dg.AssetChecksDefinition]:
    """A `current_version` check for every asset with a code version."""
    return [current_version_check(a, prompts) for a in versioned(assets)]


def check_keys(assets: Iterable[dg.AssetsDefinition]) -> list[dg.AssetCheckKey]:
    """The keys of the checks `current_version_checks` builds for `assets`."""
    return [dg.AssetCheckKey(a.key, CURRENT_VERSION) for a in versioned(assets)]


DRIFT_JOB = names.CURRENT_VERSION_CHECKS_JOB
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def drift_state(
    instance: dg.DagsterInstance, assets: Sequence[dg.AssetsDefinition]
) -> dict[str, list]:
    """Per asset: its code version now and its latest materialization's storage id."""
    latest = {
        r.asset_entry.asset_key: r.asset_entry.last_materialization_storage_id
        for r in instance.get_asset_records([a.key for a in assets])
    }
    return {
        a.key.to_user_string(): [a.code_versions_by_key[a.key], latest.get(a.key)] for a in assets
    }


def build_drift_sensor(assets: Sequence[dg.AssetsDefinition]) -> dg.SensorDefinition:
    """The sensor that runs the checks (its job, `DRIFT_JOB`) when versions or data changed."""
    covered = versioned(assets)
    job = dg.define_asset_job(
        DRIFT_JOB,
        selection=dg.AssetSelection.checks(*check_keys(covered)),
        executor_def=dg.in_process_executor,  # event-log reads: a process per check costs more
        description="Check that every asset partition was built by the current code version.",
    )

    @dg.sensor(
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the current_version checks when a reload changed a code version (a "
        "prompt edit) or an asset was materialized again, once no other run is in flight. It "
        "reads the event log only.",
    )
    def code_version_drift_sensor(
        context: dg.SensorEvaluationContext,
    ) -> dg.RunRequest | dg.SkipReason:
        state = drift_state(context.instance, covered)
        if context.cursor and json.loads(context.cursor) == state:
            return dg.SkipReason("no code version or materialization changed")
        if context.instance.get_runs(filters=dg.RunsFilter(statuses=_IN_FLIGHT), limit=1):
            return dg.SkipReason("waiting for the runs in flight to finish")
        context.update_cursor(json.dumps(state))
        return dg.RunRequest()

    return code_version_drift_sensor
