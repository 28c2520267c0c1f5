"""Declarative automation, evaluated with Dagster's own tester: what a new pool shard and a
prompt edit set running by themselves, what they never start (retraining), and that the
indexes and the evaluation run once, after everything they read is fresh.

Each tick materializes what it requested (recorded with the code version the definitions
give it, as a run would) and then runs the `current_version` checks, as
`code_version_drift_sensor` does once the runs are over."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest

from rar_pipeline.core.enhance import prompts
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.definitions import build_assets, build_definitions
from rar_pipeline.defs.drift import (
    CODE_VERSION_TAG,
    CURRENT_VERSION,
    built_versions,
    current_version_checks,
    current_version_result,
    versioned,
)
from rar_pipeline.defs.resources import RetrieverResource
from tests.fake_vlm import FakeVLMResource

SHARDS, TASKS = ["shop_task0_cand_pool", "union_cand_pool"], ["shop_task0"]
INDEXES = {f"lancedb_index_{c}" for c in ("none", "corpus", "query", "full", "inference_only")}
TRAINING = {f"{p}_{c}" for p in ("training_pairs", "retriever_checkpoint")
            for c in ("none", "corpus", "query", "full")}  # fmt: skip


def graph() -> dg.Definitions:
    keys = ["corpus", "vlm", "retriever", "lancedb", "mlflow"]
    assets = build_assets(FakeVLMResource(), RetrieverResource())
    return dg.Definitions(
        assets=assets,
        asset_checks=current_version_checks(assets),
        resources={k: dg.ResourceDefinition.none_resource() for k in keys},
    )


def assets_of(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    return [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]


def code_versions(defs: dg.Definitions) -> dict[str, str | None]:
    return {
        k.to_user_string(): v for a in assets_of(defs) for k, v in a.code_versions_by_key.items()
    }


def run_drift_checks(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, bool]:
    """What `code_version_drift_sensor`'s run records: each current_version check's result."""
    out = {}
    for asset in versioned(assets_of(defs)):
        name = asset.key.to_user_string()
        current = asset.code_versions_by_key[asset.key]
        result = current_version_result(built_versions(instance, asset), current, name)
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(asset.key, CURRENT_VERSION, passed=result.passed)
        )
        out[name] = result.passed
    return out


# the blocking checks each asset's materialization evaluates (defs/checks.py)
BLOCKING_CHECKS = {"candidate_pool": "quarantine_ceiling", "queries": "quarantine_ceiling",
                   "corpus_captions": "caption_coverage",
                   **{f"training_pairs_{c}": "no_test_leakage"
                      for c in ("none", "corpus", "query", "full")},
                   **{c.index_asset: "current_checkpoint" for c in INDEXED.values()}}  # fmt: skip


def materialized(
    instance: dg.DagsterInstance, asset: str, *partitions: str | None, checks_pass: bool = True
) -> None:
    """Record materializations, with their blocking checks' results, as a run would.

    (Runless check results can be recorded once per partition: later ones are left out.)
    """
    checked = instance.__dict__.setdefault("_checked", set())
    version = instance.__dict__.setdefault("_versions", code_versions(graph())).get(asset)
    tags = {CODE_VERSION_TAG: version} if version else None
    for partition in partitions or (None,):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset, partition=partition, tags=tags)
        )
        if asset in BLOCKING_CHECKS and (asset, partition) not in checked:
            checked.add((asset, partition))
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    dg.AssetKey(asset), BLOCKING_CHECKS[asset], passed=checks_pass,
                    blocking=True, partition=partition,
                )
            )  # fmt: skip


def requested(result) -> dict[str, set[str | None]]:
    """Asset -> the partitions the evaluation requested (None: an unpartitioned asset)."""
    keys = {r.key for r in result.results if isinstance(r.key, dg.AssetKey)}
    partitions = {k.to_user_string(): set(result.get_requested_partitions(k)) for k in keys}
    return {asset: p for asset, p in partitions.items() if p}


def materialize_everything(instance: dg.DagsterInstance) -> None:
    """The whole graph materialized once, on one corpus."""
    instance.add_dynamic_partitions("pool_shards", SHARDS)
    instance.add_dynamic_partitions("query_tasks", TASKS)
    for asset in ("candidate_pool", "corpus_captions", "enhanced_corpus"):
        materialized(instance, asset, *SHARDS)
    for asset in ("queries", "enhanced_queries"):
        materialized(instance, asset, *TASKS)
    for asset in sorted(TRAINING) + sorted(INDEXES) + ["retrieval_eval"]:
        materialized(instance, asset)


@pytest.fixture
def instance():
    """An instance where the whole graph was materialized once, on one corpus."""
    with dg.instance_for_test() as instance:
        materialize_everything(instance)
        yield instance


def settle(defs, instance):
    """The first evaluation: it records where things stand and requests nothing."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert requested(result) == {}
    return result.cursor


def test_everything_that_materializes_by_itself_ships_stopped():
    resources = {k: dg.ResourceDefinition.none_resource() for k in ["corpus", "lancedb", "mlflow"]}
    defs = build_definitions(
        {**resources, "vlm": FakeVLMResource(), "retriever": RetrieverResource()}
    )
    sensors = defs.get_repository_def().sensor_defs
    automation = [s for s in sensors if isinstance(s, dg.AutomationConditionSensorDefinition)]
    assert sorted(s.name for s in automation) == ["automation_enhancement", "automation_index"]
    assert {s.name: s.run_tags for s in automation} == {
        "automation_enhancement": {"rar/workload": "vlm"},
        "automation_index": {"rar/workload": "index"},
    }
    running = {s.name for s in sensors if s.default_status == dg.DefaultSensorStatus.RUNNING}
    # the one sensor on by default runs the current_version checks, which read the event log
    assert running == {"code_version_drift_sensor"}
    schedules = defs.get_repository_def().schedule_defs
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in schedules)


def run_ticks(defs, instance, cursor, limit: int = 6) -> list[dict[str, set[str | None]]]:
    """Evaluate until nothing more is requested, materializing what each tick requested.

    `cursor` None is a sensor's first tick; the cursor it ends with is `instance._cursor`.
    """
    ticks = []
    for _ in range(limit):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor, tick = result.cursor, requested(result)
        instance.__dict__["_cursor"] = cursor
        if not tick:
            return ticks
        ticks.append(tick)
        for asset, partitions in tick.items():
            materialized(instance, asset, *partitions)
        run_drift_checks(defs, instance)
    raise AssertionError(f"still requesting after {limit} ticks: {ticks[-1]}")


def edit_caption_prompt(monkeypatch, instance: dg.DagsterInstance | None = None) -> dg.Definitions:
    """Edit the corpus caption prompt and reload: the definitions the reload gives.

    With `instance`, what is materialized from now on carries their code versions.
    """
    edited = dataclasses.replace(
        prompts.CORPUS_CAPTION, system=prompts.CORPUS_CAPTION.system + " Mention materials."
    )
    monkeypatch.setitem(prompts.PROMPTS, "corpus_caption", edited)
    defs = graph()
    if instance is not None:
        instance.__dict__["_versions"] = code_versions(defs)
    return defs


def retrain(instance, defs, configs=("corpus", "full")) -> None:
    """A person materializes the outdated training pairs and checkpoints (training is manual)."""
    for config in configs:
        materialized(instance, f"training_pairs_{config}")
        materialized(instance, f"retriever_checkpoint_{config}")
    run_drift_checks(defs, instance)


def runs_of(ticks, asset: str) -> int:
    return sum(asset in tick for tick in ticks)


def union(ticks) -> dict[str, set[str | None]]:
    out: dict[str, set[str | None]] = {}
    for tick in ticks:
        for asset, partitions in tick.items():
            out.setdefault(asset, set()).update(partitions)
    return out


LINEAGE_OF_CAPTIONS = {"lancedb_index_corpus", "lancedb_index_full", "lancedb_index_inference_only"}


def test_a_new_shard_flows_to_every_index_and_the_evaluation_without_retraining(instance):
    defs = graph()
    cursor = settle(defs, instance)
    # the corpus sensor registers the new file as a partition and ingests it
    instance.add_dynamic_partitions("pool_shards", ["new_cand_pool"])
    materialized(instance, "candidate_pool", "new_cand_pool")
    ticks = run_ticks(defs, instance, cursor)
    # the new shard only is captioned and merged; every index takes its candidates; the
    # evaluation follows; training never starts by itself
    assert union(ticks) == {
        "corpus_captions": {"new_cand_pool"},
        "enhanced_corpus": {"new_cand_pool"},
        **{index: {None} for index in INDEXES},
        "retrieval_eval": {None},
    }
    # the first tick plans captions and merge together (one run, in dependency order)
    assert ticks[0]["corpus_captions"] == ticks[0]["enhanced_corpus"] == {"new_cand_pool"}


CAPTION_EDIT_FIRST = {
    "corpus_captions": set(SHARDS),
    "enhanced_corpus": set(SHARDS),
    # the none retriever over full's texts: nothing it reads waits for training
    "lancedb_index_inference_only": {None},
}


@pytest.mark.parametrize("sensor", ["on at the reload", "turned on after the reload"])
def test_a_prompt_edit_refreshes_its_lineage_and_waits_for_training_before_the_evaluation(
    instance, monkeypatch, sensor
):
    cursor = settle(graph(), instance) if sensor == "on at the reload" else None
    defs = edit_caption_prompt(monkeypatch, instance)
    # the drift sensor runs the checks after the reload: the caption lineage fails them
    checks = run_drift_checks(defs, instance)
    assert not checks["corpus_captions"] and not checks["retriever_checkpoint_full"]
    assert checks["enhanced_queries"] and checks["lancedb_index_none"]

    ticks = run_ticks(defs, instance, cursor)
    # every shard of the caption lineage on the first tick, captions and merge in one run;
    # not the queries, not the none and query indexes; training waits for a person, and so
    # do the indexes that embed with its outdated checkpoints, and the evaluation
    assert ticks[0]["corpus_captions"] == ticks[0]["enhanced_corpus"] == set(SHARDS)
    assert union(ticks) == CAPTION_EDIT_FIRST

    retrain(instance, defs)
    after = run_ticks(defs, instance, instance.__dict__["_cursor"])
    assert union(after) == {
        "lancedb_index_corpus": {None},
        "lancedb_index_full": {None},
        "retrieval_eval": {None},
    }
    # the evaluation once, after every index it compares is fresh
    assert runs_of(ticks + after, "retrieval_eval") == 1
    assert "retrieval_eval" not in after[0]
    assert all(v for v in run_drift_checks(defs, instance).values())


def running(instance, defs, partition: str, *assets: str) -> None:
    """A run of `assets`' `partition` that has started and not written yet."""
    keys = [dg.AssetKey(a) for a in assets]
    instance.create_run_for_job(
        defs.resolve_implicit_job_def_def_for_assets(keys),
        asset_selection=frozenset(keys),
        tags={"dagster/partition": partition},
        status=dg.DagsterRunStatus.STARTED,
    )


def test_the_indexes_wait_while_a_shard_of_the_edit_is_still_running(instance, monkeypatch):
    defs = edit_caption_prompt(monkeypatch, instance)
    run_drift_checks(defs, instance)
    retrain(instance, defs)  # training is current: only the captions hold the rest back
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # turned on now
    assert requested(first) == {"corpus_captions": set(SHARDS), "enhanced_corpus": set(SHARDS)}
    # one shard's run is over; the other's is still running and has not written yet
    materialized(instance, "corpus_captions", SHARDS[0])
    materialized(instance, "enhanced_corpus", SHARDS[0])
    running(instance, defs, SHARDS[1], "corpus_captions", "enhanced_corpus")
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert requested(second) == {}  # no index reads a half-refreshed corpus
    # the run ends: every index that reads captions, then the evaluation, once
    materialized(instance, "corpus_captions", SHARDS[1])
    materialized(instance, "enhanced_corpus", SHARDS[1])
    ticks = run_ticks(defs, instance, second.cursor)
    assert union(ticks) == {**{i: {None} for i in LINEAGE_OF_CAPTIONS}, "retrieval_eval": {None}}
    assert runs_of(ticks, "retrieval_eval") == 1


def test_a_retrained_checkpoint_refreshes_its_indexes_and_the_evaluation(instance):
    defs = graph()
    cursor = settle(defs, instance)
    materialized(instance, "retriever_checkpoint_none")  # someone retrained `none`
    assert union(run_ticks(defs, instance, cursor)) == {
        "lancedb_index_none": {None},
        "lancedb_index_inference_only": {None},  # the none retriever over full's texts
        "retrieval_eval": {None},
    }


def test_a_failed_blocking_check_stops_the_flow_until_it_passes(instance):
    defs = graph()
    cursor = settle(defs, instance)
    instance.add_dynamic_partitions("pool_shards", ["bad_cand_pool"])
    materialized(instance, "candidate_pool", "bad_cand_pool")
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert requested(result)["corpus_captions"] == {"bad_cand_pool"}
    # the VLM was down: the shard's captions fail caption_coverage
    materialized(instance, "corpus_captions", "bad_cand_pool", checks_pass=False)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert "enhanced_corpus" not in requested(result)
