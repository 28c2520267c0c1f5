"""Declarative automation, evaluated with Dagster's own tester: what a new pool shard and a
prompt edit set running by themselves, and what they never start (retraining)."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest

from rar_pipeline.core.enhance import prompts
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.definitions import build_assets, build_definitions
from rar_pipeline.defs.resources import RetrieverResource
from tests.fake_vlm import FakeVLMResource

SHARDS, TASKS = ["shop_task0_cand_pool", "union_cand_pool"], ["shop_task0"]
INDEXES = {f"lancedb_index_{c}" for c in ("none", "corpus", "query", "full", "inference_only")}
TRAINING = {f"{p}_{c}" for p in ("training_pairs", "retriever_checkpoint")
            for c in ("none", "corpus", "query", "full")}  # fmt: skip


def graph() -> dg.Definitions:
    keys = ["corpus", "vlm", "retriever", "lancedb", "mlflow"]
    return dg.Definitions(
        assets=build_assets(FakeVLMResource(), RetrieverResource()),
        resources={k: dg.ResourceDefinition.none_resource() for k in keys},
    )


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
    for partition in partitions or (None,):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))
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


@pytest.fixture
def instance():
    """An instance where the whole graph was materialized once, on one corpus."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("pool_shards", SHARDS)
        instance.add_dynamic_partitions("query_tasks", TASKS)
        for asset in ("candidate_pool", "corpus_captions", "enhanced_corpus"):
            materialized(instance, asset, *SHARDS)
        for asset in ("queries", "enhanced_queries"):
            materialized(instance, asset, *TASKS)
        for asset in sorted(TRAINING) + sorted(INDEXES) + ["retrieval_eval"]:
            materialized(instance, asset)
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
    """Evaluate until nothing more is requested, materializing what each tick requested."""
    ticks = []
    for _ in range(limit):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor, tick = result.cursor, requested(result)
        if not tick:
            return ticks
        ticks.append(tick)
        for asset, partitions in tick.items():
            materialized(instance, asset, *partitions)
    raise AssertionError(f"still requesting after {limit} ticks: {ticks[-1]}")


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


def test_a_prompt_edit_requests_every_partition_of_exactly_the_assets_it_changes(
    instance, monkeypatch
):
    cursor = settle(graph(), instance)
    edited = dataclasses.replace(
        prompts.CORPUS_CAPTION, system=prompts.CORPUS_CAPTION.system + " Mention materials."
    )
    monkeypatch.setitem(prompts.PROMPTS, "corpus_caption", edited)
    ticks = run_ticks(graph(), instance, cursor)
    # the caption lineage: every shard, the indexes that read captions, the evaluation;
    # not the queries, not the none and query indexes, not training
    assert union(ticks) == {
        "corpus_captions": set(SHARDS),
        "enhanced_corpus": set(SHARDS),
        **{index: {None} for index in LINEAGE_OF_CAPTIONS},
        "retrieval_eval": {None},
    }
    assert ticks[0]["corpus_captions"] == set(SHARDS)


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
