"""The current_version check: partitions built by older code (a prompt edit) fail it, named,
with the prompts that changed, until they are rebuilt; its sensor runs it when needed."""

from __future__ import annotations

import dataclasses
import shutil
import uuid

import dagster as dg
import pytest

from rar_pipeline.core.enhance import prompts
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_definitions
from rar_pipeline.defs.drift import (
    CURRENT_VERSION,
    DRIFT_JOB,
    SHOWN,
    Built,
    build_drift_sensor,
    current_version_checks,
    current_version_result,
    prompt_metadata,
)
from rar_pipeline.defs.resources import resources_from_settings

SHARDS = ["shard_a", "shard_b", "shard_c"]
pool = dg.StaticPartitionsDefinition(SHARDS)


def captions_asset(version: str) -> dg.AssetsDefinition:
    """A captions-like asset recording the corpus caption prompt it used."""

    @dg.asset(name="captions", partitions_def=pool, code_version=version)
    def captions() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=prompt_metadata([prompts.PROMPTS["corpus_caption"]]))

    return captions


def materialize(instance, asset, *partitions) -> list[dg.AssetCheckEvaluation]:
    """Materialize partitions of `asset` with its current_version check; the last check."""
    evaluations = []
    for partition in partitions:
        result = dg.materialize(
            [asset, *current_version_checks([asset])], partition_key=partition, instance=instance
        )
        evaluations = result.get_asset_check_evaluations()
    return evaluations


def plain(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def edit_caption_prompt(monkeypatch) -> tuple[str, str]:
    spec = prompts.PROMPTS["corpus_caption"]
    edited = dataclasses.replace(spec, system=spec.system + " Name the materials.")
    monkeypatch.setitem(prompts.PROMPTS, "corpus_caption", edited)
    return spec.version, edited.version


def test_partitions_built_by_the_current_code_pass(instance):
    [check] = materialize(instance, captions_asset("v1"), *SHARDS)
    assert check.check_name == CURRENT_VERSION and check.passed
    assert plain(check) | {"built_with": None} == {
        "current_code_version": "v1", "materialized": 3, "outdated": 0, "built_with": None,
    }  # fmt: skip


def test_a_prompt_edit_fails_the_check_naming_partitions_and_prompt(instance, monkeypatch):
    materialize(instance, captions_asset("v1"), *SHARDS)
    old, new = edit_caption_prompt(monkeypatch)
    [check] = materialize(instance, captions_asset("v2"), "shard_b")

    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    meta = plain(check)
    assert meta["outdated"] == 2 and meta["materialized"] == 3
    assert meta["outdated_partitions"] == "shard_a, shard_c"
    assert meta["changed_prompts"] == f"corpus_caption: {old} -> {new}"
    assert meta["built_with"] == {"v1": 2, "v2": 1}
    assert "captions" in meta["to_backfill"]
    assert check.description == "2 of 3 materialized partitions were built by older code"

    # rebuilding the rest makes it pass again
    [check] = materialize(instance, captions_asset("v2"), "shard_a", "shard_c")
    assert check.passed and plain(check)["outdated"] == 0


def test_a_version_change_without_a_prompt_change_says_so(instance):
    materialize(instance, captions_asset("v1"), "shard_a")
    [check] = materialize(instance, captions_asset("v2"), "shard_b")
    assert plain(check)["changed_prompts"].startswith("none (the backend, model or code")


def test_never_materialized_partitions_are_not_outdated(instance):
    [check] = materialize(instance, captions_asset("v1"), "shard_a")
    assert check.passed and plain(check)["materialized"] == 1


def test_an_unpartitioned_asset_is_checked_by_its_latest_materialization(instance):
    def index(version):
        @dg.asset(name="index", code_version=version)
        def index_asset() -> None:
            return None

        return index_asset

    [check] = materialize(instance, index("v1"), None)
    assert check.passed
    v2 = index("v2")
    result = dg.materialize(
        [v2, *current_version_checks([v2])],
        selection=dg.AssetSelection.checks_for_assets(v2),
        instance=instance,
    )
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and plain(check)["outdated"] == 1
    assert "outdated_partitions" in plain(check)  # empty for an unpartitioned asset


def test_long_lists_are_cut_but_counted():
    built = {f"shard_{i:03d}": Built("old", {}) for i in range(SHOWN + 10)}
    meta = plain(current_version_result(built, "new", "captions"))
    assert meta["outdated"] == SHOWN + 10
    assert meta["outdated_partitions"].endswith("and 10 more")
    assert meta["outdated_partitions"].count("shard_") == SHOWN


class TestSensor:
    def tick(self, sensor, instance, cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
            data = sensor.evaluate_tick(context)
        return data.run_requests, data.cursor

    def test_runs_the_checks_when_versions_or_materializations_change(self, instance):
        v1 = captions_asset("v1")
        requests, cursor = self.tick(build_drift_sensor([v1]), instance, None)
        assert len(requests) == 1  # first tick: check what is there
        assert self.tick(build_drift_sensor([v1]), instance, cursor)[0] == []

        # a reload with a new code version (a prompt edit)
        v2 = captions_asset("v2")
        requests, cursor = self.tick(build_drift_sensor([v2]), instance, cursor)
        assert len(requests) == 1
        assert self.tick(build_drift_sensor([v2]), instance, cursor)[0] == []

        # a backfill materialized again
        dg.materialize([v2], partition_key="shard_a", instance=instance)
        requests, cursor = self.tick(build_drift_sensor([v2]), instance, cursor)
        assert len(requests) == 1

    def test_waits_while_runs_are_in_flight(self, instance):
        instance.add_run(
            dg.DagsterRun(job_name="enhance_corpus", run_id=str(uuid.uuid4()),
                          status=dg.DagsterRunStatus.STARTED)
        )  # fmt: skip
        sensor = build_drift_sensor([captions_asset("v1")])
        requests, cursor = self.tick(sensor, instance, None)
        assert requests == [] and cursor is None  # the change is still pending

    def test_targets_the_check_only_job(self):
        sensor = build_drift_sensor([captions_asset("v1")])
        assert sensor.job_name == DRIFT_JOB
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_every_versioned_asset_of_the_graph_is_checked():
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    versioned = {k for k in graph.get_all_asset_keys() if graph.get(k).code_version}
    checked = {k.asset_key for k in graph.asset_check_keys if k.name == CURRENT_VERSION}
    assert checked == versioned and "demo/corpus_captions" in {k.to_user_string() for k in checked}
    job = defs.resolve_job_def(DRIFT_JOB)
    assert not job.asset_layer.selected_asset_keys  # checks only: nothing is materialized


@pytest.mark.slow
def test_a_prompt_edit_fails_exactly_the_caption_lineage_of_a_real_run(
    demo_project, tmp_path, monkeypatch
):
    home = tmp_path / "dagster_home"
    # Other xdist workers read the shared demo's instance meanwhile: SQLite opens a -wal and
    # a -shm file beside a run's event log for each reader and removes them when it is done.
    # The demo's writes were checkpointed into the .db files when it finished, so the copy
    # leaves out the passing files that other workers' reads of the shared project create
    # and delete (copying one that vanishes mid-copy fails the copy).
    passing = shutil.ignore_patterns("*.db-wal", "*.db-shm", "*.db-journal")
    shutil.copytree(demo_project.root / "dagster_home", home, ignore=passing)
    resources = resources_from_settings(
        load_settings({"RAR_PROJECT_DIR": str(demo_project.root), "RAR_EPOCHS": "3"})
    )

    def drift_checks() -> dict[str, dg.AssetCheckEvaluation]:
        defs = build_definitions(resources)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            result = defs.resolve_job_def(DRIFT_JOB).execute_in_process(instance=instance)
        return {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}

    before = drift_checks()
    assert before and all(e.passed for e in before.values()), {
        a: plain(e) for a, e in before.items() if not e.passed
    }
    old, new = edit_caption_prompt(monkeypatch)
    after = drift_checks()
    failing = {a for a, e in after.items() if not e.passed}
    # the captions, what merges and embeds them, and the training data built from them
    # (retraining shows as outdated; nothing retrains by itself)
    assert failing == {
        "corpus_captions", "enhanced_corpus", "retrieval_eval",
        *(f"lancedb_index_{c}" for c in ("corpus", "full", "inference_only")),
        *(f"{a}_{c}" for a in ("training_pairs", "retriever_checkpoint")
          for c in ("corpus", "full")),
    }  # fmt: skip
    captions = plain(after["corpus_captions"])
    assert captions["changed_prompts"] == f"corpus_caption: {old} -> {new}"
    assert captions["outdated"] == captions["materialized"] > 1
