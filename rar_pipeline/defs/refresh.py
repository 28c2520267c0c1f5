"""What `rar refresh` runs: the outdated partitions, the missing ones, and what reads them.

After a prompt edit (or a new VLM, sampling or retriever setting), `rar run` would go
through every partition, served from the caches. `rar refresh` runs only the asset
partitions whose latest materialization carries another code version than the
definitions now (the ones the `current_version` checks list), those never materialized,
and, in Dagster's order, everything downstream of a partition it runs. Training is left
out unless asked for (it costs GPU hours): an outdated checkpoint is then reported, and
the index that embeds with it fails its blocking `current_checkpoint` check, so the
evaluation does not compare configs built from different enhanced data.

The same decision is one click in the UI: the `refresh` job (Jobs > refresh > Launchpad >
Launch run; `include_training: true` to retrain) plans it over the partitions the
instance knows and submits it as one asset backfill, which the daemon runs in dependency
order within the run queue's limits: the indexes and the evaluation once, at the end.
"""

from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from rar_pipeline.core import names
from rar_pipeline.defs.drift import Built, built_versions, versioned
from rar_pipeline.defs.launch import stages, upstream
from rar_pipeline.defs.namespace import bare_name
from rar_pipeline.defs.partitions import CorpusPartitions


class Refresh:
    """Decides, step by step in Dagster's order, whether `rar refresh` runs a partition.

    Call it with each (asset, partition) in order; it answers why the partition runs, or
    None to leave it as it is, and remembers what it chose so that downstream follows.
    """

    def __init__(
        self,
        assets: Sequence[dg.AssetsDefinition],
        instance: dg.DagsterInstance,
        *,
        include_training: bool = False,
    ) -> None:
        self.graph = upstream(assets)
        self.instance = instance
        self.include_training = include_training
        self.assets = {a.key.to_user_string(): a for a in versioned(assets)}
        self.chosen: dict[tuple[str, str | None], str] = {}
        self.held: dict[str, str] = {}  # checkpoints left outdated -> why they would run
        self._built: dict[str, dict[str | None, Built]] = {}

    def _why_own(self, asset: str, partition: str | None) -> str | None:
        definition = self.assets.get(asset)
        if definition is None:
            return None  # no code version: nothing to compare (the demo's own assets)
        if asset not in self._built:
            self._built[asset] = built_versions(self.instance, definition)
        built = self._built[asset].get(partition)
        if built is None:
            return "never materialized"
        if built.code_version != definition.code_versions_by_key[definition.key]:
            return "built by an older code version"
        return None

    def _why_upstream(self, asset: str, partition: str | None) -> str | None:
        deps, partitioning = self.graph.get(asset, (set(), None))
        for dep, dep_partition in self.chosen:
            if dep not in deps:
                continue
            same = partitioning is not None and self.graph[dep][1] == partitioning
            if not same or dep_partition == partition:
                label = bare_name(dep) + (f"[{dep_partition}]" if dep_partition else "")
                return f"reads {label}, refreshed"
        return None

    def __call__(self, asset: str, partition: str | None) -> str | None:
        why = self._why_own(asset, partition) or self._why_upstream(asset, partition)
        if why is None:
            return None
        if bare_name(asset).startswith(names.RETRIEVER_CHECKPOINT) and not self.include_training:
            self.held[asset] = why
            return None
        self.chosen[(asset, partition)] = why
        return why

    def summary(self, *, plan: bool = False) -> str:
        """What the refresh ran (or, with `plan`, would run) and what it left out."""
        lines = [
            f"{'would refresh' if plan else 'refreshed'} {len(self.chosen)} asset partitions"
            if self.chosen
            else "everything is up to date: nothing to refresh"
        ]
        if self.held:
            listed = ", ".join(f"{bare_name(a)} ({why})" for a, why in sorted(self.held.items()))
            lines.append(
                f"training left out: {listed}. Their indexes' current_checkpoint checks keep "
                "the evaluation from comparing configs built from different enhanced data; "
                "`rar refresh --include-training` retrains them."
            )
        return "\n".join(lines)


def plan(
    assets: Sequence[dg.AssetsDefinition],
    instance: dg.DagsterInstance,
    *,
    include_training: bool = False,
) -> Refresh:
    """`Refresh` decided over every partition the instance knows, in Dagster's order."""
    refresh = Refresh(assets, instance, include_training=include_training)
    partitions = CorpusPartitions.of(assets)
    keys: dict[str | None, list] = {
        "shards": instance.get_dynamic_partitions(partitions.pools.name),
        "tasks": instance.get_dynamic_partitions(partitions.tasks.name),
        None: [None],
    }
    for asset, partitioned_by in stages(assets, demo=False):
        for partition in keys[partitioned_by]:
            refresh(asset, partition)
    return refresh


class RefreshConfig(dg.Config):
    """What the `refresh` job brings up to date."""

    include_training: bool = Field(
        default=False,
        description="Retrain the outdated checkpoints too (GPU hours). Without it they are "
        "listed, and their indexes and the evaluation stay blocked until retrained.",
    )


def submit_backfill(
    assets: Sequence[dg.AssetsDefinition], instance: dg.DagsterInstance, refresh: Refresh
) -> str:
    """Submit what `refresh` chose as one asset backfill; returns its id."""
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    chosen = {AssetKeyPartitionKey(dg.AssetKey(a.split("/")), p) for a, p in refresh.chosen}
    subset = AssetGraphSubset.from_asset_partition_set(chosen, AssetGraph.from_assets(assets))
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        backfill_timestamp=get_current_timestamp(),
        tags={names.LAUNCHED_BY: names.REFRESH_JOB},
        dynamic_partitions_store=instance,
        asset_graph_subset=subset,
        title=f"refresh: {len(chosen)} asset partitions",
        description=refresh.summary(plan=True),
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def build_refresh_job(assets: Sequence[dg.AssetsDefinition]) -> dg.JobDefinition:
    """The `refresh` job: plans the refresh and submits it as one backfill (UI: one click)."""

    @dg.op(name="plan_and_submit_refresh")
    def plan_and_submit(context: dg.OpExecutionContext, config: RefreshConfig) -> None:
        refresh = plan(assets, context.instance, include_training=config.include_training)
        context.log.info(refresh.summary(plan=True))
        if not refresh.chosen:
            return
        for (asset, partition), why in refresh.chosen.items():
            context.log.info(f"{asset}{f'[{partition}]' if partition else ''}: {why}")
        backfill_id = submit_backfill(assets, context.instance, refresh)
        context.log.info(
            f"submitted backfill {backfill_id} (Overview > Backfills, or /runs/b/{backfill_id})"
        )

    @dg.job(
        name=names.REFRESH_JOB,
        description="Bring everything a prompt edit or new setting made outdated up to date "
        "in one backfill: the outdated and missing partitions and what reads them, in "
        "dependency order, the evaluation once at the end. include_training retrains the "
        "outdated checkpoints (off by default: GPU hours). `rar refresh` from a shell.",
    )
    def refresh_job() -> None:
        plan_and_submit()

    return refresh_job
