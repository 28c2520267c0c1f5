"""Captions and the merge stream a pool table in chunks: same tables, counts and versions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.corpus.tables import records_to_frame, write_parquet
from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.engine import EnhanceOptions
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.merge import merge_corpus, merge_corpus_files
from rar_pipeline.core.enhance.outputs import Enhancer, caption_candidates, caption_shard
from rar_pipeline.core.files import values_hash
from tests.fake_vlm import FakeVLM


def _candidates(n: int) -> list[Candidate]:
    kinds = [
        lambda i: Candidate(f"1:{i}", Modality.TEXT, f"Plain text number {i}.", None),
        lambda i: Candidate(f"1:{i}", Modality.IMAGE, None, "img/a.png"),
        lambda i: Candidate(
            f"1:{i}", Modality.IMAGE_TEXT, f"Listing {i}. Price $9.99.", "img/b.png"
        ),
    ]
    return [kinds[i % 3](i) for i in range(n)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(23):  # distinct images: a repeat in a later chunk would be a cache hit
        Image.new("RGB", (16, 16), (10 * i, 0, 200)).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


@pytest.fixture
def pool(tmp_path: Path) -> tuple[list[Candidate], Path]:
    candidates = _candidates(23)
    return candidates, write_parquet(
        records_to_frame(candidates, Candidate), tmp_path / "p.parquet"
    )


def _enhancer(root: Path, cache: Path) -> Enhancer:
    return Enhancer(FakeVLM(), EnhancementCache(cache), EnhanceOptions(), root)


def _frame(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


@pytest.mark.parametrize("chunk_rows", [1, 7])
def test_captions_written_in_chunks_equal_one_call_over_the_shard(root, tmp_path, pool, chunk_rows):
    candidates, path = pool
    whole = caption_candidates(candidates, _enhancer(root, tmp_path / "c1"))
    expected = write_parquet(whole.frame, tmp_path / "whole.parquet")
    shard = caption_shard(
        path, tmp_path / "chunked.parquet", _enhancer(root, tmp_path / "c2"), chunk_rows=chunk_rows
    )
    pd.testing.assert_frame_equal(_frame(shard.path), _frame(expected))
    assert (
        pq.read_schema(shard.path).remove_metadata() == pq.read_schema(expected).remove_metadata()
    )
    assert shard.data_version == values_hash(whole.frame["caption"].tolist())
    assert shard.stats.as_metadata() | {"seconds": 0, "items_per_second": 0} == (
        whole.stats.as_metadata() | {"seconds": 0, "items_per_second": 0}
    )
    assert shard.samples == whole.samples
    images = whole.frame[whole.frame["item_type"] != "text"]
    assert (shard.rows, shard.images, shard.captioned) == (
        23,
        len(images),
        int(images["caption"].notna().sum()),
    )


@pytest.mark.parametrize("chunk_rows", [1, 7])
@pytest.mark.parametrize("shuffled", [False, True])
def test_the_merge_in_chunks_equals_one_merge(root, tmp_path, pool, chunk_rows, shuffled):
    candidates, path = pool
    captioned = caption_candidates(candidates, _enhancer(root, tmp_path / "c"))
    captions = captioned.frame.sample(frac=1, random_state=1) if shuffled else captioned.frame
    captions_path = write_parquet(captions.reset_index(drop=True), tmp_path / "captions.parquet")
    whole = merge_corpus(candidates, pd.read_parquet(captions_path), GuardPolicy.DROP)
    expected = write_parquet(whole.frame, tmp_path / "whole.parquet")
    shard = merge_corpus_files(path, captions_path, tmp_path / "out.parquet", GuardPolicy.DROP,
                               chunk_rows=chunk_rows)  # fmt: skip
    pd.testing.assert_frame_equal(_frame(shard.path), _frame(expected))
    assert (
        pq.read_schema(shard.path).remove_metadata() == pq.read_schema(expected).remove_metadata()
    )
    assert shard.data_version == values_hash(whole.frame["enhanced_txt"].tolist())
    assert (shard.rows, shard.without_enhanced_txt) == (
        len(whole.frame),
        whole.without_enhanced_txt,
    )
    assert shard.items_by_type == whole.items_by_type and shard.samples == whole.samples
    assert (shard.guard_flagged, shard.guard_dropped) == (whole.guard_flagged, whole.guard_dropped)


def test_a_candidate_without_a_caption_fails_the_merge_and_writes_nothing(root, tmp_path, pool):
    candidates, path = pool
    captioned = caption_candidates(candidates, _enhancer(root, tmp_path / "c"))
    captions_path = write_parquet(captioned.frame.iloc[:-1], tmp_path / "captions.parquet")
    with pytest.raises(KeyError, match="1:22 has no caption row"):
        merge_corpus_files(path, captions_path, tmp_path / "out" / "t.parquet", GuardPolicy.KEEP,
                           chunk_rows=7)  # fmt: skip
    assert list((tmp_path / "out").iterdir()) == []
