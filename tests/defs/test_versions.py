"""A partition's code version always describes the configuration that produced it.

Versions are fixed when the definitions load. Before `defs.versions`, a launchpad run
config that set `temperature` (or any field a code version is made of) wrote outputs that
Dagster labelled with the default's version and showed FRESH. Now such a run is refused;
and a `rar run` flag builds the definitions it runs with, so what it writes carries the
flag's version, which a UI loaded without the flag shows as stale.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from rar_pipeline.cli import main
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_assets, build_definitions
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import CorpusResource, resources_from_settings
from rar_pipeline.defs.versions import run_versions
from tests.fake_vlm import FakeVLMResource
from tests.graph_resources import SMALL_RETRIEVER, graph_resources
from tests.projects import point_at_project

TASK = "mbeir_mini_task6"


@pytest.fixture
def ingested(mini_corpus: Path, tmp_path: Path):
    """The mini corpus ingested into a fresh instance, with a fake VLM."""
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"))
    vlm, instance = FakeVLMResource(), dg.DagsterInstance.ephemeral()
    settings = load_settings(data_root=corpus.data_root, artifacts_dir=corpus.artifacts_dir)
    ingest = [
        a for a in build_assets(vlm) if {k.path[-1] for k in a.keys} & {"candidate_pool", "queries"}
    ]
    run_pipeline(settings, resources=graph_resources(corpus, vlm), assets=ingest,
                 instance=instance)  # fmt: skip
    return corpus, vlm, instance


def _enhance_queries(corpus, vlm, instance, run_config=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        build_assets(vlm), selection=["enhanced_queries"], partition_key=TASK,
        resources=graph_resources(corpus, vlm), instance=instance, run_config=run_config,
        raise_on_error=False,
    )  # fmt: skip


def _override(**enhance) -> dict:
    return {"resources": {"vlm": {"config": {"enhance": enhance}}}}


def test_a_launchpad_override_of_a_versioned_field_is_refused(ingested):
    corpus, vlm, instance = ingested
    refused = _enhance_queries(corpus, vlm, instance, _override(temperature=0.7))
    assert not refused.success
    (failure,) = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "enhanced_queries: this run's resources give code version" in message
    assert "fields the run config sets: vlm: enhance.temperature" in message
    assert "RAR_* environment variable" in message and "reload the code location" in message
    # nothing was written, so nothing shows FRESH under the default's version
    assert not corpus.artifacts().enhanced_queries(TASK).exists()
    assert instance.get_latest_materialization_event(dg.AssetKey("enhanced_queries")) is None


@pytest.mark.parametrize(
    "field", [{"seed": 7}, {"query_type_overrides": {TASK: "qa"}}, {"guard": "DROP"}]
)  # fmt: skip
def test_every_field_a_version_is_made_of_is_refused(ingested, field):
    corpus, vlm, instance = ingested
    assert not _enhance_queries(corpus, vlm, instance, _override(**field)).success


def test_fields_that_feed_no_version_may_be_set_per_run(ingested):
    corpus, vlm, instance = ingested
    assert _enhance_queries(corpus, vlm, instance, _override(max_failure_rate=0.5)).success
    resolver = get_stale_status_resolver(instance, build_assets(vlm))
    status = resolver.get_status(dg.AssetKey("enhanced_queries"), TASK)
    assert status == StaleStatus.FRESH


def test_a_training_option_set_in_the_run_config_is_refused(ingested):
    corpus, vlm, instance = ingested
    versions = run_versions(vlm, SMALL_RETRIEVER)
    faster = SMALL_RETRIEVER.training.model_copy(update={"lr": 0.5})
    other = run_versions(vlm, SMALL_RETRIEVER.model_copy(update={"training": faster}))
    checkpoint = "retriever_checkpoint_none"  # run_versions: by name, in any namespace
    assert versions[checkpoint] != other[checkpoint]
    result = dg.materialize(
        build_assets(vlm, SMALL_RETRIEVER), selection=["retriever_checkpoint_none"],
        resources=graph_resources(corpus, vlm), instance=instance, raise_on_error=False,
        run_config={"resources": {"retriever": {"config": {"training": {"lr": 0.5}}}}},
    )  # fmt: skip
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "fields the run config sets: retriever: training.lr" in message


def test_a_rar_run_flag_writes_its_own_version_and_the_ui_shows_it_stale(
    mini_corpus, tmp_path, monkeypatch
):
    point_at_project(monkeypatch, tmp_path)
    argv = ["run", "--data", str(mini_corpus), "--through", "retrieval", "--epochs", "2"]
    assert main(argv) == 0
    settings = load_settings(data_root=mini_corpus)  # what the UI loads: no flag
    ui = build_definitions(resources_from_settings(settings))
    instance = dg.DagsterInstance.get()
    key = dg.AssetKey(["mbeir_mini", "retriever_checkpoint_none"])  # the corpus' namespace
    written = instance.get_latest_materialization_event(key).asset_materialization.tags
    flagged = resources_from_settings(load_settings(data_root=mini_corpus, epochs=2))["retriever"]
    assert (
        written["dagster/code_version"]
        == run_versions(resources_from_settings(settings)["vlm"], flagged)[key.path[-1]]
    )
    resolver = get_stale_status_resolver(instance, list(ui.assets))
    assert resolver.get_status(key) == StaleStatus.STALE
    # run again as the UI is configured: FRESH again, under the UI's version
    assert main(argv[:-2]) == 0
    resolver = get_stale_status_resolver(dg.DagsterInstance.get(), list(ui.assets))
    assert resolver.get_status(key) == StaleStatus.FRESH
