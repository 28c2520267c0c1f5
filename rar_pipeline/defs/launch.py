"""Run the asset graph from Python (what `rar demo` and `rar run` call).

Each stage is materialized partition by partition in this process against the project's
Dagster instance, so every run, its metadata and its checks show up in the web UI
afterwards exactly as if they had been launched from there.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.corpus.mbeir import NO_TRAIN_SPLIT, discover
from rar_pipeline.core.names import DEMO_GROUP, GROUPS
from rar_pipeline.core.settings import Settings
from rar_pipeline.defs.checks import BLOCKING
from rar_pipeline.defs.io import SUMMARY
from rar_pipeline.defs.namespace import bare_name
from rar_pipeline.defs.partitions import (
    POOL_SHARDS,
    QUERY_TASKS,
    CorpusPartitions,
    kind_of,
    register_corpus_partitions,
)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
LAUNCHED_BY = {names.LAUNCHED_BY: "rar-cli"}
_ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _launch_tags() -> dict[str, str]:
    """Tags on every run `rar` launches: who, and which process (to find it dead later)."""
    return {**LAUNCHED_BY, "rar/pid": str(os.getpid()), "rar/host": socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def stale_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs `rar` left STARTED in a process that no longer exists (kill -9, a crash).

    Only runs launched on this host are judged; a reused pid counts as alive.
    """
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE, tags=LAUNCHED_BY))
    host = socket.gethostname()
    return [
        run
        for run in runs
        if run.tags.get("rar/host") == host
        and run.tags.get("rar/pid", "").isdigit()
        and not _alive(int(run.tags["rar/pid"]))
    ]


def fail_stale_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark `stale_runs` failed, saying why; returns their ids."""
    stale = stale_runs(instance)
    for run in stale:
        instance.report_run_failed(
            run,
            f"the rar process that ran this (pid {run.tags['rar/pid']}) is gone: it was killed "
            "or crashed. Rerun it: work already committed to the cache is reused.",
        )
    return [run.run_id for run in stale]


def stages(
    assets: Sequence[dg.AssetsDefinition], *, demo: bool, through: str | None = None
) -> list[tuple[str, str | None]]:
    """The graph's assets in the order Dagster resolves it, each with its partitioning.

    Dagster's own topological order of the definitions (each level alphabetically), so a
    new asset is run by `rar run` as soon as it is in the graph. Demo assets are included
    only when `demo` is set; with `through`, groups after it in `GROUPS` are left out.

    Returns:
        (asset name, "shards" | "tasks" | None) per asset.
    """
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph

    by_partitions = {POOL_SHARDS: "shards", QUERY_TASKS: "tasks", None: None}
    later = set(GROUPS[GROUPS.index(through) + 1 :]) if through else set()
    graph = AssetGraph.from_assets(list(assets))
    order = []
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if (node.group_name == DEMO_GROUP and not demo) or node.group_name in later:
            continue
        order.append((key.to_user_string(), by_partitions[kind_of(node.partitions_def)]))
    return order


def upstream(assets: Sequence[dg.AssetsDefinition]) -> dict[str, tuple[set[str], str | None]]:
    """Each asset's direct upstream assets and its partitions definition's name."""
    out = {}
    for asset in assets:
        for spec in asset.specs:
            partitions = getattr(asset.partitions_def, "name", None)
            out[spec.key.to_user_string()] = (
                {d.asset_key.to_user_string() for d in spec.deps},
                partitions,
            )
    return out


class Blocked:
    """Asset partitions a failed blocking check stopped, and everything downstream of them.

    Downstream of X[p]: the same partition of an asset partitioned like X, and every
    partition of any other asset that reads X (an index reads every shard).
    """

    def __init__(self, assets: Sequence[dg.AssetsDefinition]) -> None:
        self.graph = upstream(assets)
        self.why: dict[tuple[str, str | None], str] = {}

    def add(self, asset: str, partition: str | None, reason: str) -> None:
        self.why[(asset, partition)] = reason

    def reason(self, asset: str, partition: str | None) -> str | None:
        """Why (asset, partition) must not run now, or None."""
        deps, partitions = self.graph.get(asset, (set(), None))
        for (dep, dep_partition), why in self.why.items():
            if dep not in deps:
                continue
            same_partitioning = (
                partitions is not None and self.graph.get(dep, (set(), None))[1] == partitions
            )
            if not same_partitioning or dep_partition == partition:
                return why
        return None


class StepFailed(RuntimeError):
    """A step's run failed; the message says which step and why."""

    def __init__(self, asset: str, partition: str | None, run_id: str, reason: str) -> None:
        label = f"{asset}[{partition}]" if partition else asset
        super().__init__(f"{label} failed (run {run_id}): {reason}")
        self.asset = asset
        self.partition = partition
        self.run_id = run_id


@dataclass
class StepResult:
    """One materialized asset partition, as reported to the person running it."""

    asset: str
    partition: str | None
    seconds: float
    metadata: dict[str, Any]
    failed_checks: list[str]

    @property
    def checks_passed(self) -> bool:
        return not self.failed_checks


@dataclass
class PipelineResult:
    """Everything one `run_pipeline` call materialized, and what blocking checks stopped."""

    steps: list[StepResult] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # "asset[partition]" -> why


def get_instance(settings: Settings) -> dg.DagsterInstance:
    """The project's persistent instance (DAGSTER_HOME, default <project>/dagster_home)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def _plain_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def materialize_step(
    asset: str,
    partition: str | None,
    *,
    assets: Sequence[dg.AssetsDefinition],
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    run_config: dict[str, Any] | None = None,
) -> StepResult:
    """Materialize one asset (one partition of it) in process.

    Raises:
        StepFailed: with the step's own error message (the full log is in the run).
    """
    started = time.perf_counter()
    result = dg.materialize(
        assets,
        selection=[asset],
        partition_key=partition,
        resources=resources,
        instance=instance,
        run_config={**QUIET, **(run_config or {})},
        tags=_launch_tags(),
        raise_on_error=False,
    )
    failures = result.get_step_failure_events()
    if not result.success and not _blocked_by_checks(failures):
        error = failures[0].step_failure_data.error if failures else None
        # the user-facing cause, not Dagster's wrapper around it
        while error is not None and error.cause is not None:
            error = error.cause
        reason = error.message.strip() if error is not None else "the run failed"
        raise StepFailed(asset, partition, result.run_id, reason)
    # an asset that chose not to materialize says why in an observation
    key = dg.AssetKey.from_user_string(asset)
    events = [
        e.event_specific_data.materialization  # type: ignore[union-attr]
        for e in result.get_asset_materialization_events()
        if e.asset_key == key
    ] or [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in result.get_asset_observation_events()
        if e.asset_key == key
    ]
    checks = result.get_asset_check_evaluations()
    return StepResult(
        asset=asset,
        partition=partition,
        seconds=time.perf_counter() - started,
        metadata=_plain_metadata(dict(events[-1].metadata)) if events else {},
        failed_checks=[c.check_name for c in checks if not c.passed],
    )


def _blocked_by_checks(failures: Sequence[Any]) -> bool:
    """Whether the step failed only because a blocking check failed.

    Its output was written and its checks say why; what is downstream must wait.
    """
    return bool(failures) and all(
        f.step_failure_data.error is not None
        and f.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
        for f in failures
    )


def run_pipeline(
    settings: Settings,
    *,
    resources: dict[str, Any],
    assets: Sequence[dg.AssetsDefinition],
    instance: dg.DagsterInstance,
    tasks: Sequence[str] | None = None,
    build_demo: dict[str, Any] | None = None,
    through: str | None = None,
    select: Callable[[str, str | None], str | None] | None = None,
    plan_only: bool = False,
    echo: Callable[[str], None] = lambda _msg: None,
) -> PipelineResult:
    """Materialize the graph on the corpus at `settings.data_root`, stage by stage.

    Args:
        settings: locations.
        resources: resources for the assets (real ones from `default_resources`).
        assets: every asset definition of the graph.
        instance: the Dagster instance runs are recorded in.
        tasks: which query tasks to ingest (default: all the corpus has).
        build_demo: when given, first materialize `demo_corpus` with this run config.
        through: stop after this group of `GROUPS` (default: the whole graph).
        select: called in order with each (asset, partition): why to run it, or None to
            leave it as it is (`defs.refresh.Refresh`); default: run every partition.
        plan_only: echo what would run (with `select`'s reasons) and run nothing.
        echo: called with one line per finished step.

    Returns:
        The steps with their metadata.
    """
    out = PipelineResult()
    blocked = Blocked(assets)
    stale = fail_stale_runs(instance)
    if stale:
        echo(f"marked {len(stale)} run(s) failed that a killed rar process left STARTED")

    def step(asset: str, partition: str | None, run_config: dict[str, Any] | None = None) -> None:
        name = bare_name(asset)  # the CLI speaks of one corpus: names without its namespace
        label = f"{name}[{partition}]" if partition else name
        if (why := blocked.reason(asset, partition)) is not None:
            blocked.add(asset, partition, why)  # and so is what reads it
            out.blocked[label] = why
            echo(f"  {label:<58} not run: {why}")
            return
        if plan_only:
            echo(f"  {label}")
            return
        res = materialize_step(
            asset,
            partition,
            assets=assets,
            resources=resources,
            instance=instance,
            run_config=run_config,
        )
        out.steps.append(res)
        md = res.metadata
        if failed := sorted(set(res.failed_checks) & BLOCKING):
            blocked.add(asset, partition, f"blocked by {label}'s {', '.join(failed)} check")
        detail = md.get(SUMMARY, "")  # what the asset says it did, in one line
        warn = "".join(
            f"  [{'blocking check failed' if name in BLOCKING else 'check warning'}: {name}]"
            for name in res.failed_checks
        )
        echo(f"  {label:<58} {detail}  ({res.seconds:.1f}s){warn}")

    order = stages(assets, demo=build_demo is not None, through=through)
    if build_demo is not None:
        echo(f"demo corpus -> {settings.data_root}")
        [demo] = [a for a, _ in order if bare_name(a) == names.DEMO_CORPUS]
        step(demo, None, {"ops": {names.DEMO_CORPUS: {"config": build_demo}}})
    keys = _partition_keys(settings, instance, tasks, CorpusPartitions.of(assets), echo)
    for asset, partitioned_by in order:
        if bare_name(asset) == names.DEMO_CORPUS:  # built first, above
            continue
        for partition in _announced(asset, partitioned_by, keys[partitioned_by], select, echo):
            step(asset, partition)
    return out


def _partition_keys(
    settings: Settings,
    instance: dg.DagsterInstance,
    tasks: Sequence[str] | None,
    partitions: CorpusPartitions,
    echo: Callable[[str], None],
) -> dict[str | None, list[Any]]:
    """The corpus' shards and the chosen tasks, registered as the instance's partitions."""
    layout = discover(settings.data_root)
    selected = list(tasks) if tasks else list(layout.queries)
    unknown = sorted(set(selected) - set(layout.queries))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; the corpus has {sorted(layout.queries)}")
    register_corpus_partitions(instance, layout, partitions)
    if not layout.train_tasks:
        echo("warning: " + NO_TRAIN_SPLIT)
    return {"shards": list(layout.pools), "tasks": selected, None: [None]}


def _announced(
    asset: str,
    partitioned_by: str | None,
    partitions: list[str | None],
    select: Callable[[str, str | None], str | None] | None,
    echo: Callable[[str], None],
) -> list[str | None]:
    """The partitions of `asset` to run (those `select` gives a reason for), announced."""
    if select is None:
        shown = bare_name(asset)
        echo(shown + (f" ({len(partitions)} {partitioned_by})" if partitioned_by else ""))
        return partitions
    reasons = {p: why for p in partitions if (why := select(asset, p)) is not None}
    if reasons:
        echo(f"{bare_name(asset)}: {'; '.join(sorted(set(reasons.values())))}")
    return list(reasons)
