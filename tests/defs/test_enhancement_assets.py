"""Enhancement assets under `materialize`: cache, metadata, failures, and the backfill story:
edit a prompt, exactly the affected assets turn stale, a rerun recomputes only those items."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.enhance import prompts
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_assets
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import CorpusResource, VLMResource
from tests.fake_vlm import FakeVLMResource
from tests.graph_resources import graph_resources

SHARD = "mbeir_shapeshop_task2_cand_pool"  # image+text listings
TASK = "mbeir_shapeshop_task6"  # QA queries


@pytest.fixture
def corpus(small_demo: Path, tmp_path: Path) -> CorpusResource:
    return CorpusResource(data_root=str(small_demo), artifacts_dir=str(tmp_path / "out"))


def _ingest(corpus: CorpusResource, instance: dg.DagsterInstance, vlm) -> None:
    settings = load_settings(data_root=corpus.data_root, artifacts_dir=corpus.artifacts_dir)
    assets = [a for a in build_assets(vlm) if "demo_corpus" not in {k.path[-1] for k in a.keys}]
    ingest_only = [
        a for a in assets if {k.path[-1] for k in a.keys} & {"candidate_pool", "queries"}
    ]
    run_pipeline(
        settings, resources=graph_resources(corpus, vlm), assets=ingest_only, instance=instance
    )


def _materialize(asset: str, key: str, corpus, vlm, instance, **kw):
    return dg.materialize(
        build_assets(vlm),
        selection=[asset],
        partition_key=key,
        resources=graph_resources(corpus, vlm),
        instance=instance,
        **kw,
    )


def _md(result, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def test_captions_are_cached_and_a_rerun_makes_no_backend_calls(corpus, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    vlm = FakeVLMResource()
    _ingest(corpus, instance, vlm)
    first = _md(_materialize("corpus_captions", SHARD, corpus, vlm, instance), "corpus_captions")
    assert first["items_by_type"] == {"image_text": 40}
    assert first["backend_calls"] == 40 and first["cache_hits"] == 0 and first["failures"] == 0
    assert {"seconds", "items_per_second", "samples", "model_id"} <= set(first)

    again = _md(_materialize("corpus_captions", SHARD, corpus, vlm, instance), "corpus_captions")
    assert again["backend_calls"] == 0 and again["cache_hits"] == 40

    merged = _md(_materialize("enhanced_corpus", SHARD, corpus, vlm, instance), "enhanced_corpus")
    assert merged["dagster/row_count"] == 40 and merged["without_enhanced_text"] == 0
    frame = pd.read_parquet(Path(corpus.artifacts_dir) / "enhanced_corpus" / f"{SHARD}.parquet")
    first_row = frame.iloc[0]
    assert first_row.enhanced_txt.startswith(first_row.txt + "\nVisual Context: A picture of")


def test_failed_items_are_recorded_and_the_partition_completes(corpus):
    instance = dg.DagsterInstance.ephemeral()
    vlm = FakeVLMResource(fail_first={"test_00001": 99}, enhance={"max_attempts": 2})
    _ingest(corpus, instance, vlm)
    result = _materialize("corpus_captions", SHARD, corpus, vlm, instance)
    md = _md(result, "corpus_captions")
    assert result.success and md["failures"] == 1
    captions = pd.read_parquet(Path(corpus.artifacts_dir) / "corpus_captions" / f"{SHARD}.parquet")
    failed = captions[captions.status == "failed"]
    assert len(failed) == 1 and "scripted failure" in failed.iloc[0].error
    assert (captions.status == "generated").sum() == 39
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["caption_coverage"].passed  # 39 of 40 captioned: nothing is blocked
    check = checks["failure_rate"]
    assert not check.passed  # 1 of 40 is above the 2% default: a warning, not a failure
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["failures"].value == 1 and check.metadata["vlm_items"].value == 40


def test_queries_are_routed_and_overrides_apply(corpus):
    instance = dg.DagsterInstance.ephemeral()
    vlm = FakeVLMResource(enhance={"query_type_overrides": {"mbeir_shapeshop_task7": "qa"}})
    _ingest(corpus, instance, vlm)
    md = _md(_materialize("enhanced_queries", TASK, corpus, vlm, instance), "enhanced_queries")
    assert md["items_by_type"] == {"qa": 45}
    frame = pd.read_parquet(Path(corpus.artifacts_dir) / "enhanced_queries" / f"{TASK}.parquet")
    assert all("(seen in" in t and t.endswith("?") for t in frame.enhanced_txt)

    forced = _md(
        _materialize("enhanced_queries", "mbeir_shapeshop_task7", corpus, vlm, instance),
        "enhanced_queries",
    )
    assert forced["items_by_type"] == {"qa": 45} and forced["query_type_override"] == "qa"
    text_only = _md(
        _materialize("enhanced_queries", "mbeir_shapeshop_task1", corpus, vlm, instance),
        "enhanced_queries",
    )
    assert text_only["backend_calls"] == 0 and text_only["items_by_type"] == {"text": 45}


def test_code_versions_follow_prompts_backend_and_model():
    base = VLMResource().code_versions()
    other_model = VLMResource(backend="vllm", model_id="org/other").code_versions()
    assert base["corpus_captions"] != other_model["corpus_captions"]
    assert base["enhanced_queries"] != other_model["enhanced_queries"]
    assert base["enhanced_corpus"] != other_model["enhanced_corpus"]  # merges their captions
    strict = VLMResource(enhance={"guard": "drop"}).code_versions()
    assert strict["enhanced_corpus"] != base["enhanced_corpus"]
    assert strict["corpus_captions"] == base["corpus_captions"]


def test_editing_the_caption_prompt_stales_exactly_the_caption_lineage(
    corpus, tmp_path, monkeypatch
):
    """The README's backfill walkthrough, as a test."""
    vlm = FakeVLMResource()
    with dg.instance_for_test() as instance:
        _ingest(corpus, instance, vlm)
        for asset, key in (
            ("corpus_captions", SHARD),
            ("enhanced_corpus", SHARD),
            ("enhanced_queries", TASK),
        ):
            _materialize(asset, key, corpus, vlm, instance)

        def status(assets: list, asset: str, key: str) -> StaleStatus:
            # Dagster's own resolver, the one behind the UI's "stale" badges
            return get_stale_status_resolver(instance, assets).get_status(dg.AssetKey(asset), key)

        before = build_assets(vlm)
        assert status(before, "corpus_captions", SHARD) == StaleStatus.FRESH
        assert status(before, "enhanced_queries", TASK) == StaleStatus.FRESH

        edited = dataclasses.replace(
            prompts.CORPUS_CAPTION, system=prompts.CORPUS_CAPTION.system + " Mention materials."
        )
        # one edit, in one place: the prompt table that routing, cache keys and versions read
        monkeypatch.setitem(prompts.PROMPTS, "corpus_caption", edited)
        after = build_assets(vlm)
        assert status(after, "corpus_captions", SHARD) == StaleStatus.STALE
        assert status(after, "enhanced_corpus", SHARD) == StaleStatus.STALE
        assert status(after, "enhanced_queries", TASK) == StaleStatus.FRESH

        # the backfill: captions recompute every item the prompt touches, queries nothing
        calls_before = len(vlm.fake.requests)
        md = _md(_materialize("corpus_captions", SHARD, corpus, vlm, instance), "corpus_captions")
        assert md["backend_calls"] == 40 and md["cache_hits"] == 0
        assert all(r.system == edited.system for r in vlm.fake.requests[calls_before:])
        queries_md = _md(
            _materialize("enhanced_queries", TASK, corpus, vlm, instance), "enhanced_queries"
        )
        assert queries_md["backend_calls"] == 0 and queries_md["cache_hits"] == 45


def test_offline_backend_end_to_end_on_the_demo(corpus):
    """The real offline enhancer through the assets: captioner memory, captions, accuracy."""
    instance = dg.DagsterInstance.ephemeral()
    vlm = VLMResource()  # offline
    _ingest(corpus, instance, vlm)
    assets = build_assets(vlm)
    resources = graph_resources(corpus, vlm)
    memory = dg.materialize(
        assets, selection=["offline_captioner"], resources=resources, instance=instance
    )
    memory_md = _md(memory, "offline_captioner")
    assert memory_md["pairs"] > 0 and memory_md["tasks_used"]
    layout = discover(corpus.data_root)
    assert "mbeir_shapeshop_task0_cand_pool" in layout.pools
    md = _md(
        _materialize("corpus_captions", "mbeir_shapeshop_task0_cand_pool", corpus, vlm, instance),
        "corpus_captions",
    )
    assert md["backend"] == "offline" and md["failures"] == 0
    assert not any(k.startswith("caption_accuracy") for k in md)  # production reads no truth
    accuracy = _md(
        dg.materialize(
            assets, selection=["demo_caption_accuracy"], resources=resources, instance=instance
        ),
        "demo_caption_accuracy",
    )
    assert accuracy["shards_scored"] == ["mbeir_shapeshop_task0_cand_pool"]
    assert accuracy["caption_accuracy_n"] == 40
    assert accuracy["caption_accuracy_all"] >= 0.8


def test_caption_accuracy_is_refused_on_a_corpus_without_ground_truth(mini_corpus, tmp_path):
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"))
    result = dg.materialize(
        build_assets(FakeVLMResource()),
        selection=["demo_caption_accuracy"],
        resources=graph_resources(corpus),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "demo corpus only" in str(failure.step_failure_data.error)


def test_a_prompt_edit_changes_the_assets_version_and_the_cache_keys_together(corpus, monkeypatch):
    """Routing, cache keys and code versions read one table: an edit moves all of them."""
    from rar_pipeline.core.corpus.records import Candidate
    from rar_pipeline.core.corpus.tables import frame_to_records
    from rar_pipeline.core.enhance.cache import EnhancementCache
    from rar_pipeline.core.enhance.outputs import Enhancer, caption_candidates

    vlm = FakeVLMResource()
    instance = dg.DagsterInstance.ephemeral()
    _ingest(corpus, instance, vlm)
    paths = corpus.artifacts()
    cands = frame_to_records(pd.read_parquet(paths.pool(SHARD)), Candidate)

    def keys_written() -> set[str]:
        cache = EnhancementCache(paths.caches)
        before = cache.store.keys()
        caption_candidates(cands, Enhancer(vlm.create(paths), cache, vlm.options(), corpus.root))
        return cache.store.keys() - before

    versions, keys = vlm.code_versions(), keys_written()
    assert keys and keys_written() == set()  # a rerun writes nothing new
    edited = dataclasses.replace(prompts.CORPUS_CAPTION, system="Describe it.")
    monkeypatch.setitem(prompts.PROMPTS, "corpus_caption", edited)
    after, new_keys = vlm.code_versions(), keys_written()
    assert after["corpus_captions"] != versions["corpus_captions"]
    assert after["enhanced_queries"] == versions["enhanced_queries"]
    assert len(new_keys) == len(keys) and not new_keys & keys


def test_an_empty_caption_memory_says_whether_the_train_split_is_missing_or_unpaired():
    from rar_pipeline.defs.assets.enhancement import empty_memory_text

    assert "the corpus has no train split" in empty_memory_text(0)
    unpaired = empty_memory_text(120)
    assert "the train split's 120 queries label no (image, text) pair" in unpaired
    assert "no train split" not in unpaired
