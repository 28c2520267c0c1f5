"""Index maintenance: updates make rows searchable at once, maintenance folds them in later.

Real LanceDB on a temp folder, tables just big enough for an ANN index (the small plan).
"""

from datetime import datetime

import dagster as dg
import lancedb.table
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.build import update_index
from rar_pipeline.core.index.maintenance import (
    IndexHealth,
    Maintenance,
    MaintenancePolicy,
    needs_maintenance,
    plan,
)
from rar_pipeline.core.search.store import TableSearch
from rar_pipeline.defs.jobs import INDEX_RUN
from rar_pipeline.defs.maintenance import (
    index_maintenance_sensor,
    maintain_indexes_job,
    weekly_index_compaction,
)
from rar_pipeline.defs.resources import LanceDBResource
from tests.core.index.test_build import pool, rows_for
from tests.word_encoder import WordEncoder

PLAN = AnnPlan(min_rows=300, rows_per_partition=300)
POLICY = MaintenancePolicy(max_deltas=2)


def health(unindexed=0, deltas=0, indexes=None):
    return IndexHealth(400, unindexed, deltas, {"vector_idx": 1} if indexes is None else indexes)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (health(), Maintenance()),
        (health(unindexed=5), Maintenance(delta=True)),
        (health(unindexed=5, deltas=1), Maintenance(delta=True)),
        (health(unindexed=5, deltas=2), Maintenance(delta=True, merge_deltas=True)),
        (health(deltas=3), Maintenance(merge_deltas=True)),
        (health(unindexed=5, indexes={}), Maintenance()),  # no index yet: the update builds it
    ],
)
def test_maintenance_deltas_new_rows_and_merges_deltas_past_the_limit(state, expected):
    assert plan(state, POLICY) == expected
    assert needs_maintenance(state, POLICY) == bool(expected)


def test_a_full_maintenance_compacts_whatever_the_state_and_the_threshold_waits_for_rows():
    assert plan(health(), POLICY, full=True) == Maintenance(full=True)
    patient = MaintenancePolicy(min_unindexed_rows=100)
    assert plan(health(unindexed=99), patient) == Maintenance()
    assert plan(health(unindexed=100), patient) == Maintenance(delta=True)


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A 400-row table with its full-text and ANN indexes; updates must never optimize."""
    store = LanceDBResource(uri=str(tmp_path / "lance"))
    pools = {"task1_cand_pool": pool("1", 400)}
    update_index(store, "none", rows_for(pools), WordEncoder(), tmp_path, PLAN)

    def refuse(*args, **kwargs):
        raise AssertionError("an update folded rows into the indexes")

    monkeypatch.setattr(lancedb.table.LanceTable, "optimize", refuse)

    def add(did: str, text: str):
        pools["task1_cand_pool"].append(Candidate(did, Modality.TEXT, text, None))
        return update_index(store, "none", rows_for(pools), WordEncoder(), tmp_path, PLAN)

    return store, add, monkeypatch


def found(store, text, *, hybrid=False):
    search, vector = TableSearch("task1_cand_pool", PLAN), WordEncoder().embed_text(text)
    if hybrid:
        return store.search_hybrid("none", vector, text, 1, search)["did"].tolist()
    return store.search_vectors("none", vector, 1, search)["did"].tolist()


def test_new_rows_are_searchable_as_soon_as_written_and_maintenance_folds_them_in(table):
    store, add, _ = table
    assert store.index_health("none").unindexed_rows == 0
    done = add("1:new", "zebra zebra zebra")
    assert done.index["unindexed_rows"] == 1
    assert found(store, "zebra") == ["1:new"]  # dense: the exact scan of unindexed rows
    assert found(store, "zebra", hybrid=True) == ["1:new"]  # full text too

    done = store.maintain_indexes("none", POLICY)
    assert done["steps"] == ["delta"]
    assert (done["after"]["unindexed_rows"], done["after"]["deltas"]) == (0, 1)
    assert {"text_idx", "vector_idx"} <= set(done["after"]["indexes"])  # both kept
    assert found(store, "zebra") == ["1:new"]
    assert found(store, "zebra", hybrid=True) == ["1:new"]
    assert store.maintain_indexes("none", POLICY)["steps"] == []  # nothing left to do


def test_deltas_past_the_limit_are_merged_and_a_full_maintenance_compacts(table):
    store, add, monkeypatch = table
    for i, word in enumerate(["zebra", "yak", "koala"]):
        add(f"1:new{i}", f"{word} {word} {word}")
        done = store.maintain_indexes("none", POLICY)
    assert done["steps"] == ["delta", "merge_deltas"]
    assert done["after"]["deltas"] <= POLICY.max_deltas
    assert [found(store, w) for w in ["zebra", "yak", "koala"]] == [
        ["1:new0"], ["1:new1"], ["1:new2"]
    ]  # fmt: skip

    monkeypatch.undo()  # the schedule's maintenance is LanceDB's optimize()
    add("1:new3", "okapi okapi okapi")
    done = store.maintain_indexes("none", POLICY, full=True)
    assert done["steps"] == ["compact", "merge_all"]
    assert done["after"] | {"indexes": None} == {
        "rows": 404, "unindexed_rows": 0, "deltas": 0, "indexes": None
    }  # fmt: skip
    assert found(store, "okapi") == ["1:new3"] and found(store, "yak") == ["1:new1"]


def test_the_sensor_launches_maintenance_for_tables_behind_and_waits_for_index_runs(table):
    store, add, _ = table
    with dg.instance_for_test() as instance:

        def tick():
            context = dg.build_sensor_context(instance=instance, resources={"lancedb": store})
            return index_maintenance_sensor(context)

        assert isinstance(tick(), dg.SkipReason)  # every row indexed
        add("1:new", "zebra zebra zebra")
        request = tick()
        assert isinstance(request, dg.RunRequest)
        config = request.run_config["ops"]["maintain_index_tables"]["config"]
        assert config == {"full": False, "tables": ["none"]}

        run = instance.create_run_for_job(maintain_indexes_job, tags=INDEX_RUN,
                                          status=dg.DagsterRunStatus.STARTED)  # fmt: skip
        assert "in flight" in tick().skip_message
        instance.report_run_failed(run)

        result = maintain_indexes_job.execute_in_process(
            run_config=request.run_config, resources={"lancedb": store}, instance=instance
        )
        assert result.success
        assert store.index_health("none").unindexed_rows == 0
        assert isinstance(tick(), dg.SkipReason)


def test_the_weekly_schedule_asks_for_a_full_maintenance():
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 6, 4))
    request = weekly_index_compaction(context)
    assert request.run_config["ops"]["maintain_index_tables"]["config"]["full"] is True
