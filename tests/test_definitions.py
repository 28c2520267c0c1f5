"""The one Definitions object loads, with the graph, jobs, sensor and resources wired."""

from __future__ import annotations

import datetime
import importlib
import json
import tempfile
from pathlib import Path

import dagster as dg
import yaml

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.definitions import build_definitions, defs
from rar_pipeline.defs.resources import CorpusResource
from rar_pipeline.defs.sensors import corpus_files_sensor
from tests.graph_resources import graph_resources


def test_definitions_load_with_the_graph():
    graph = defs.resolve_asset_graph()
    # every key in the demo corpus' namespace (defs.namespace)
    assert {k.path[0] for k in graph.get_all_asset_keys()} == {"demo"}
    keys = {k.path[-1] for k in graph.get_all_asset_keys()}
    assert {
        "demo_corpus",
        "candidate_pool",
        "queries",
        "offline_captioner",
        "corpus_captions",
        "enhanced_corpus",
        "enhanced_queries",
        "training_pairs_none",
        "training_pairs_full",
    } <= keys

    def demo(name: str) -> dg.AssetKey:
        return dg.AssetKey(["demo", name])

    queries = graph.get(demo("queries"))
    assert demo("candidate_pool") in queries.parent_keys
    stage_jobs = {
        "ingest_pools": {"candidate_pool"},
        "ingest_queries": {"queries"},
        "build_demo": {"demo_corpus"},
        "enhance_corpus": {"corpus_captions", "enhanced_corpus"},
        "enhance_queries": {"enhanced_queries"},
        "training_pairs": {f"training_pairs_{c}" for c in ("none", "corpus", "query", "full")},
    }
    for name, expected in stage_jobs.items():
        selected = defs.resolve_job_def(name).asset_layer.selected_asset_keys
        assert {k.path[-1] for k in selected} == expected, name
    assert set(defs.resources) >= {"corpus", "lancedb", "mlflow", "vlm"}
    captions = graph.get(demo("corpus_captions"))
    assert {demo("candidate_pool"), demo("offline_captioner")} <= captions.parent_keys


def test_workspace_points_at_the_definitions_module():
    project = Path(__file__).resolve().parents[1]
    workspace = yaml.safe_load((project / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    location = entry["python_module"]
    assert (project / location["working_directory"]).resolve() == project
    assert importlib.import_module(location["module_name"]).defs is defs


def test_resources_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RAR_DATA_ROOT", str(tmp_path / "corpus"))
    monkeypatch.setenv("RAR_ARTIFACTS_DIR", str(tmp_path / "out"))
    from rar_pipeline.core.settings import load_settings
    from rar_pipeline.defs.resources import resources_from_settings

    resources = resources_from_settings(load_settings())
    assert resources["corpus"].data_root == str(tmp_path / "corpus")
    assert resources["corpus"].artifacts_dir == str(tmp_path / "out")
    assert resources["lancedb"].uri == str(tmp_path / "out" / "lancedb")


def _tick(instance, corpus, cursor=None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"corpus": corpus},
        definitions=build_definitions(graph_resources(corpus)),
    )
    return corpus_files_sensor(context)


def test_sensor_registers_partitions_and_ingests_new_then_changed_files(mini_corpus, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"))
    layout = discover(mini_corpus)

    first = _tick(instance, corpus)
    added = {
        r.partitions_def_name: set(r.partition_keys) for r in first.dynamic_partitions_requests
    }
    assert added == {  # in the corpus' namespace
        "mbeir_mini__pool_shards": set(layout.pools),
        "mbeir_mini__query_tasks": set(layout.queries),
    }
    # pools first; the tasks wait for a tick without pool changes
    assert {r.partition_key for r in first.run_requests} == set(layout.pools)
    assert {r.job_name for r in first.run_requests} == {"ingest_pools"}

    second = _tick(instance, corpus, first.cursor)
    assert {r.partition_key for r in second.run_requests} == set(layout.queries)
    assert {r.job_name for r in second.run_requests} == {"ingest_queries"}

    third = _tick(instance, corpus, second.cursor)
    assert third.run_requests == []

    # editing one query file re-ingests just that task
    path = layout.queries["mbeir_mini_task6"]["test"]
    path.write_text(path.read_text() + "\n")
    fourth = _tick(instance, corpus, third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == ["mbeir_mini_task6"]
    assert json.loads(fourth.cursor)


def test_sensor_skips_a_data_root_that_is_not_mbeir(tmp_path):
    corpus = CorpusResource(data_root=str(tmp_path), artifacts_dir=str(tmp_path / "out"))
    result = _tick(dg.DagsterInstance.ephemeral(), corpus)
    assert isinstance(result, dg.SkipReason)
    assert "no M-BEIR files" in (result.skip_message or "")


def test_nightly_schedule_revalidates_every_registered_shard():
    from rar_pipeline.defs.schedules import nightly_pool_revalidation

    with dg.instance_for_test() as instance, tempfile.TemporaryDirectory() as folder:
        corpus = CorpusResource(data_root=str(Path(folder) / "shop"))
        instance.add_dynamic_partitions("shop__pool_shards", ["a_cand_pool", "b_cand_pool"])
        instance.add_dynamic_partitions("other__pool_shards", ["c_cand_pool"])
        when = datetime.datetime(2026, 11, 27, 3, tzinfo=datetime.UTC)
        # as a context manager, so the instance it enters is left again
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when, resources={"corpus": corpus}
        ) as ctx:
            requests = nightly_pool_revalidation(ctx)
    assert sorted(r.partition_key for r in requests) == ["a_cand_pool", "b_cand_pool"]
    assert all(r.run_key.endswith("2026-11-27T03:00:00+00:00") for r in requests)
    assert defs.resolve_schedule_def("nightly_pool_revalidation").job_name == "ingest_pools"
