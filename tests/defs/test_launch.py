"""Running the graph from Python: stage order, and failures reported with their cause."""

from __future__ import annotations

import dagster as dg
import pytest

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.names import DEMO_GROUP, GROUPS
from rar_pipeline.definitions import build_assets
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.assets.demo import demo_corpus
from rar_pipeline.defs.launch import StepFailed, materialize_step, stages
from rar_pipeline.defs.partitions import CorpusPartitions, register_corpus_partitions
from rar_pipeline.defs.resources import CorpusResource, VLMResource


def test_a_failed_step_raises_with_the_assets_own_message(mini_corpus, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    register_corpus_partitions(instance, discover(mini_corpus), CorpusPartitions.in_namespace(""))
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"))
    with pytest.raises(StepFailed, match=r"queries\[mbeir_mini_task0\] failed .*candidate_pool"):
        materialize_step(
            "queries",
            "mbeir_mini_task0",
            assets=[demo_corpus, candidate_pool, queries],
            resources={"corpus": corpus},
            instance=instance,
        )


def test_stages_follow_the_asset_graph_upstream_first():
    assets = build_assets(VLMResource())
    order = [name for name, _ in stages(assets, demo=False)]
    parents = {
        spec.key.to_user_string(): {d.asset_key.to_user_string() for d in spec.deps}
        for asset in assets
        for spec in asset.specs
    }
    assert set(order) == set(parents) - {"demo_corpus", "demo_caption_accuracy"}
    for name in order:  # every parent comes before its child
        for parent in parents[name] & set(order):
            assert order.index(parent) < order.index(name)
    assert dict(stages(assets, demo=False))["corpus_captions"] == "shards"
    assert dict(stages(assets, demo=False))["enhanced_queries"] == "tasks"
    assert dict(stages(assets, demo=False))["offline_captioner"] is None


def test_stages_are_the_order_dagster_resolves_not_one_of_our_own():
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph

    assets = build_assets(VLMResource())
    resolved = [k.to_user_string() for k in AssetGraph.from_assets(assets).toposorted_asset_keys]
    assert [name for name, _ in stages(assets, demo=True)] == resolved


def test_demo_stages_score_captions_after_captioning():
    # run_pipeline builds demo_corpus before any stage (nothing in the graph reads it)
    order = [name for name, _ in stages(build_assets(VLMResource()), demo=True)]
    assert "demo_corpus" in order
    assert order.index("demo_caption_accuracy") > order.index("corpus_captions")


def test_every_asset_belongs_to_a_group_in_run_order_and_through_stops_after_one():
    assets = build_assets(VLMResource())
    groups = {spec.key.to_user_string(): spec.group_name for a in assets for spec in a.specs}
    assert set(groups.values()) == {*GROUPS, DEMO_GROUP}
    order = [name for name, _ in stages(assets, demo=False)]
    for group in GROUPS:
        kept = [name for name, _ in stages(assets, demo=False, through=group)]
        allowed = set(GROUPS[: GROUPS.index(group) + 1])
        assert kept == [n for n in order if groups[n] in allowed]  # same order, a prefix
    assert stages(assets, demo=False, through="evaluation") == stages(assets, demo=False)


def test_a_real_vlm_graph_has_no_offline_captioner_stage():
    order = [name for name, _ in stages(build_assets(VLMResource(backend="openai")), demo=False)]
    assert "offline_captioner" not in order and "corpus_captions" in order


def test_a_failed_blocking_check_stops_what_is_downstream_and_only_that(mini_corpus, tmp_path):
    """mbeir_mini_task0_cand_pool is 78% quarantined: under a 50% ceiling it is blocked."""
    from rar_pipeline.core.settings import load_settings
    from rar_pipeline.defs.launch import Blocked, run_pipeline
    from tests.fake_mlflow import FakeMlflow
    from tests.fake_stores import FakeVectorStore
    from tests.fake_vlm import FakeVLMResource

    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"),
                            block_quarantine_rate=0.5)  # fmt: skip
    vlm = FakeVLMResource()
    with dg.instance_for_test() as instance:
        result = run_pipeline(
            load_settings(data_root=mini_corpus, artifacts_dir=tmp_path / "out"),
            resources={
                "corpus": corpus,
                "vlm": vlm,
                "lancedb": FakeVectorStore(),
                "mlflow": FakeMlflow(),
                "retriever": None,
            },  # fmt: skip
            assets=build_assets(vlm),
            instance=instance,
        )
    bad = "mbeir_mini_task0_cand_pool"
    why = f"blocked by candidate_pool[{bad}]'s quarantine_ceiling check"
    ran = {(s.asset, s.partition) for s in result.steps}
    # every shard was ingested; the bad one's captions never ran, the good ones' did
    assert {("candidate_pool", p) for p in discover(mini_corpus).pools} <= ran
    assert result.blocked[f"corpus_captions[{bad}]"] == why
    assert ("corpus_captions", "mbeir_mini_task6_cand_pool") in ran
    # queries are validated against every shard, so they wait too, and all that follows
    assert result.blocked["queries[mbeir_mini_task0]"] == why
    assert "retrieval_eval" in result.blocked and not any(s.asset == "retrieval_eval" for s in
                                                          result.steps)  # fmt: skip
    assert Blocked(build_assets(vlm)).reason("candidate_pool", bad) is None
