"""Partitions: the corpus' pool shards and query tasks, registered by file stem."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.defs.partitions import (
    CorpusPartitions,
    missing_partition_requests,
    pool_shards,
    query_tasks,
    register_corpus_partitions,
)

MINI_SHARDS = [
    "mbeir_mini_task0_cand_pool",
    "mbeir_mini_task6_cand_pool",
    "mbeir_union_train_cand_pool",
]
MINI_TASKS = ["mbeir_mini_task0", "mbeir_mini_task6"]
BARE = CorpusPartitions.in_namespace("")  # the graph's before a corpus' namespace


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def _known(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    return {
        name: sorted(instance.get_dynamic_partitions(name))
        for name in (pool_shards.name, query_tasks.name)
    }


def test_the_partition_definitions_have_stable_names():
    assert (pool_shards.name, query_tasks.name) == ("pool_shards", "query_tasks")


def test_a_fresh_instance_misses_every_shard_and_task(mini_corpus: Path, instance):
    requests = missing_partition_requests(instance, discover(mini_corpus), BARE)
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in requests] == [
        ("pool_shards", MINI_SHARDS),
        ("query_tasks", MINI_TASKS),
    ]


def test_asking_what_is_missing_registers_nothing(mini_corpus: Path, instance):
    missing_partition_requests(instance, discover(mini_corpus), BARE)
    assert _known(instance) == {"pool_shards": [], "query_tasks": []}


def test_registering_adds_pool_file_stems_and_task_names(mini_corpus: Path, instance):
    added = register_corpus_partitions(instance, discover(mini_corpus), BARE)
    assert added == {"pool_shards": MINI_SHARDS, "query_tasks": MINI_TASKS}
    assert _known(instance) == {"pool_shards": MINI_SHARDS, "query_tasks": MINI_TASKS}


def test_registering_again_adds_nothing(mini_corpus: Path, instance):
    layout = discover(mini_corpus)
    register_corpus_partitions(instance, layout, BARE)
    assert register_corpus_partitions(instance, layout, BARE) == {}
    assert missing_partition_requests(instance, layout, BARE) == []
    assert _known(instance) == {"pool_shards": MINI_SHARDS, "query_tasks": MINI_TASKS}


def test_a_new_pool_file_dropped_into_the_corpus_is_added_alone(mini_corpus: Path, instance):
    register_corpus_partitions(instance, discover(mini_corpus), BARE)
    local = mini_corpus / "cand_pool" / "local"
    shutil.copy(
        local / "mbeir_mini_task0_cand_pool.jsonl", local / "mbeir_extra_task0_cand_pool.jsonl"
    )

    requests = missing_partition_requests(instance, discover(mini_corpus), BARE)
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in requests] == [
        ("pool_shards", ["mbeir_extra_task0_cand_pool"])
    ]
    added = register_corpus_partitions(instance, discover(mini_corpus), BARE)
    assert added == {"pool_shards": ["mbeir_extra_task0_cand_pool"]}
    assert _known(instance)["pool_shards"] == sorted([*MINI_SHARDS, "mbeir_extra_task0_cand_pool"])
    assert _known(instance)["query_tasks"] == MINI_TASKS


def test_a_new_query_task_is_added_without_touching_the_shards(mini_corpus: Path, instance):
    register_corpus_partitions(instance, discover(mini_corpus), BARE)
    test_dir = mini_corpus / "query" / "test"
    shutil.copy(test_dir / "mbeir_mini_task0_test.jsonl", test_dir / "mbeir_mini_task9_test.jsonl")
    added = register_corpus_partitions(instance, discover(mini_corpus), BARE)
    assert added == {"query_tasks": ["mbeir_mini_task9"]}


def test_partitions_already_known_to_the_instance_are_not_requested(mini_corpus: Path, instance):
    instance.add_dynamic_partitions("pool_shards", ["mbeir_mini_task0_cand_pool"])
    instance.add_dynamic_partitions("query_tasks", MINI_TASKS)
    added = register_corpus_partitions(instance, discover(mini_corpus), BARE)
    assert added == {"pool_shards": [s for s in MINI_SHARDS if s != "mbeir_mini_task0_cand_pool"]}


def test_each_corpus_namespace_keeps_its_own_partition_lists(instance, mini_corpus, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(mini_corpus, other)
    (other / "cand_pool" / "local" / "mbeir_mini_task0_cand_pool.jsonl").unlink()
    mini, demo = CorpusPartitions.in_namespace("mbeir_mini"), CorpusPartitions.in_namespace("demo")
    register_corpus_partitions(instance, discover(mini_corpus), mini)
    register_corpus_partitions(instance, discover(other), demo)
    assert (mini.pools.name, demo.tasks.name) == ("mbeir_mini__pool_shards", "demo__query_tasks")
    assert sorted(instance.get_dynamic_partitions(mini.pools.name)) == MINI_SHARDS
    assert len(instance.get_dynamic_partitions(demo.pools.name)) == len(MINI_SHARDS) - 1
    assert instance.get_dynamic_partitions(BARE.pools.name) == []
