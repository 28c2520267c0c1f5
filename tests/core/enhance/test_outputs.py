"""The one core function behind each enhancement asset, on records, without Dagster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.engine import EnhanceOptions
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.merge import QUERY_COLUMNS
from rar_pipeline.core.enhance.outputs import (
    CAPTION_COLUMNS,
    Enhancer,
    caption_candidates,
    code_versions,
    fit_captioner,
    rewrite_queries,
)
from tests.fake_vlm import FakeVLM


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name, colour in (("a.png", (200, 0, 0)), ("b.png", (0, 0, 200))):
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), colour).save(tmp_path / "img" / name)
    return tmp_path


CANDIDATES = [
    Candidate("c1", Modality.TEXT, "Quorble opened in 1962.", None),
    Candidate("c2", Modality.IMAGE, None, "img/a.png"),
    Candidate("c3", Modality.IMAGE_TEXT, "Listing 1001. Price $9.99.", "img/b.png"),
]
QUERIES = [
    Query("q1", Modality.TEXT, "Which brand opened in 1962?", None, ("c1",), split="train"),
    Query("q2", Modality.IMAGE_TEXT, "who makes this?", "img/a.png", ("c1",), split="test"),
    Query("q3", Modality.IMAGE_TEXT, "same one but blue", "img/a.png", ("c2",), split="test"),
]


def test_captions_have_one_row_per_candidate_with_its_type(root: Path, tmp_path: Path):
    fake = FakeVLM()
    result = caption_candidates(
        CANDIDATES, Enhancer(fake, EnhancementCache(tmp_path / "cache"), EnhanceOptions(), root)
    )
    assert list(result.frame.columns) == CAPTION_COLUMNS
    rows = result.frame.set_index("did")
    assert rows.loc["c1", "item_type"] == "text" and pd.isna(rows.loc["c1", "caption"])
    assert rows.loc["c1", "status"] == "passthrough"
    assert rows.loc["c2", "caption"].startswith("A picture of a")
    assert rows.loc["c3", "item_type"] == "image_text"
    assert len(fake.requests) == 2 and result.stats.backend_calls == 2
    assert [did for did, _, _ in result.samples] == ["c2", "c3"]


def test_query_rewrites_are_routed_guarded_and_merged(root: Path, tmp_path: Path):
    fake = FakeVLM()
    options = EnhanceOptions(guard=GuardPolicy.DROP)
    enhancer = Enhancer(fake, EnhancementCache(tmp_path / "cache"), options, root)
    result = rewrite_queries(QUERIES, enhancer, task="mbeir_x_task7")
    frame = result.merged.frame.set_index("qid")
    assert list(result.merged.frame.columns) == QUERY_COLUMNS
    assert frame.loc["q1", "enhanced_txt"] == "Which brand opened in 1962?"
    assert frame.loc["q2", "query_type"] == "qa"
    assert frame.loc["q2", "enhanced_txt"] == "who makes this (seen in a)?"
    assert frame.loc["q3", "query_type"] == "modification"
    assert {r.prompt for r in fake.requests} == {"qa_rewrite", "modification"}


def test_a_task_override_routes_its_image_text_queries(root: Path, tmp_path: Path):
    options = EnhanceOptions(query_type_overrides={"mbeir_x_task7": "qa"})
    enhancer = Enhancer(FakeVLM(), EnhancementCache(tmp_path / "c"), options, root)
    result = rewrite_queries(QUERIES, enhancer, task="mbeir_x_task7")
    assert dict(result.merged.items_by_type) == {"text": 1, "qa": 2}
    other = rewrite_queries(QUERIES, enhancer, task="mbeir_y_task7")
    assert other.merged.items_by_type["modification"] == 1


def test_the_captioner_learns_from_the_train_split_only(root: Path, monkeypatch):
    from rar_pipeline.core.enhance import perception

    seen: list[int] = []

    def features(images, batch_size=32):
        seen.append(len(images))
        return np.ones((len(images), perception.FEATURE_DIM), dtype=np.float32)

    monkeypatch.setattr(perception, "image_features", features)
    train_image_query = Query("q9", Modality.IMAGE, None, "img/b.png", ("c1",), split="train")
    test_image_query = Query("q8", Modality.IMAGE, None, "img/a.png", ("c1",), split="test")
    memory, counts = fit_captioner(
        [*QUERIES, train_image_query, test_image_query],
        {c.did: c for c in CANDIDATES},
        root,
        perception.Perceiver(None),
    )
    assert counts["train_queries"] == 2 and counts["pairs"] == 1
    assert memory.texts == ["Quorble opened in 1962."]  # the train image query's positive
    assert counts["distinct_images"] == 1 and seen == [1]


def test_code_versions_name_every_enhancement_asset():
    versions = code_versions("offline", "offline", EnhanceOptions())
    assert set(versions) == {
        "offline_captioner",
        "corpus_captions",
        "enhanced_corpus",
        "enhanced_queries",
    }
    strict = code_versions("offline", "offline", EnhanceOptions(guard=GuardPolicy.DROP))
    assert strict["corpus_captions"] == versions["corpus_captions"]
    assert strict["enhanced_corpus"] != versions["enhanced_corpus"]
    assert strict["enhanced_queries"] != versions["enhanced_queries"]


def test_a_qid_in_two_splits_keeps_each_splits_own_rewrite(root: Path, tmp_path: Path):
    """Results are keyed by split and qid: train text never reaches the test query."""
    train = Query(
        "7:1", Modality.IMAGE_TEXT, "who sells this one?", "img/a.png", ("c1",), split="train"
    )
    test = Query("7:1", Modality.IMAGE_TEXT, "who makes this?", "img/b.png", ("c1",), split="test")
    enhancer = Enhancer(FakeVLM(), EnhancementCache(tmp_path / "c"), EnhanceOptions(), root)
    result = rewrite_queries([train, test], enhancer, task="t")
    frame = result.merged.frame.set_index("split")
    assert frame.loc["train", "enhanced_txt"] == "who sells this one (seen in a)?"
    assert frame.loc["test", "enhanced_txt"] == "who makes this (seen in b)?"


def test_two_items_with_one_id_are_refused(root: Path, tmp_path: Path):
    twice = [CANDIDATES[1], CANDIDATES[1]]
    with pytest.raises(ValueError, match="unique"):
        caption_candidates(
            twice, Enhancer(FakeVLM(), EnhancementCache(tmp_path / "c"), EnhanceOptions(), root)
        )
