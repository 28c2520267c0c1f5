"""Training pairs per config, and a lineage that follows the ablation in both directions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from rar_pipeline.core.enhance import prompts
from rar_pipeline.core.retrieval.pairs import PAIR_COLUMNS
from rar_pipeline.core.settings import load_settings
from rar_pipeline.definitions import build_assets
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import CorpusResource, FakeVLMResource

CONFIGS = ("none", "corpus", "query", "full")


@pytest.fixture(scope="module")
def built(small_demo: Path, tmp_path_factory: pytest.TempPathFactory):
    """The graph run once on the small demo with a fake VLM; tests only read it."""
    tmp_path = tmp_path_factory.mktemp("retrieval")
    corpus = CorpusResource(data_root=str(small_demo), artifacts_dir=str(tmp_path / "out"))
    vlm = FakeVLMResource()
    with dg.instance_for_test() as instance:
        assets = [a for a in build_assets(vlm) if a.group_names_by_key and "demo" not in
                  set(a.group_names_by_key.values())]  # fmt: skip
        run_pipeline(
            load_settings(data_root=small_demo, artifacts_dir=tmp_path / "out"),
            resources={"corpus": corpus, "vlm": vlm},
            assets=assets,
            instance=instance,
        )
        yield corpus, vlm, instance


def _status(instance, vlm, config: str) -> StaleStatus:
    resolver = get_stale_status_resolver(instance, build_assets(vlm))
    return resolver.get_status(dg.AssetKey(f"training_pairs_{config}"))


def test_every_config_has_pairs_from_the_train_split(built):
    corpus, _, _ = built
    frames = {c: pd.read_parquet(corpus.artifacts().training_pairs(c)) for c in CONFIGS}
    for frame in frames.values():
        assert list(frame.columns) == PAIR_COLUMNS and len(frame) > 0
        assert set(frame["split"]) == {"train", "val"}
    test_qids = set(pd.read_parquet(corpus.artifacts().queries("mbeir_shapeshop_task6"))
                    .query("split == 'test'")["qid"])  # fmt: skip
    assert not test_qids & set(frames["full"]["qid"])
    # the same pairs in every config, only the texts differ
    keys = {c: sorted(zip(f.qid, f.did, strict=True)) for c, f in frames.items()}
    assert keys["none"] == keys["corpus"] == keys["query"] == keys["full"]
    listing = frames["full"][frames["full"].cand_txt.str.contains("Visual Context", na=False)]
    assert (
        len(listing) and not frames["none"].cand_txt.str.contains("Visual Context", na=False).any()
    )


def test_before_any_edit_every_config_is_fresh(built):
    _, vlm, instance = built
    assert {c: _status(instance, vlm, c) for c in CONFIGS} == dict.fromkeys(
        CONFIGS, StaleStatus.FRESH
    )


@pytest.mark.parametrize(
    ("prompt", "stale"),
    [
        ("corpus_caption", {"corpus", "full"}),  # a caption edit: the corpus side
        ("qa_rewrite", {"query", "full"}),  # a query prompt edit: the mirror image
    ],
)
def test_a_prompt_edit_stales_exactly_the_configs_that_read_it(built, monkeypatch, prompt, stale):
    _, vlm, instance = built
    spec = prompts.PROMPTS[prompt]
    monkeypatch.setitem(prompts.PROMPTS, prompt, dataclasses.replace(spec, system="Edited."))
    assert {c: _status(instance, vlm, c) for c in CONFIGS} == {
        c: StaleStatus.STALE if c in stale else StaleStatus.FRESH for c in CONFIGS
    }


def test_the_graph_shows_the_ablation(built):
    _, vlm, _ = built
    parents = {
        spec.key.to_user_string(): {d.asset_key.to_user_string() for d in spec.deps}
        for asset in build_assets(vlm)
        for spec in asset.specs
    }
    assert parents["training_pairs_none"] == {"candidate_pool", "queries"}
    assert parents["training_pairs_corpus"] == {"candidate_pool", "queries", "enhanced_corpus"}
    assert parents["training_pairs_query"] == {"candidate_pool", "queries", "enhanced_queries"}
    assert parents["training_pairs_full"] == {
        "candidate_pool",
        "queries",
        "enhanced_corpus",
        "enhanced_queries",
    }
