"""An index update fed in chunks leaves the table, and the counts, of one update fed whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.corpus.tables import records_to_frame, write_parquet
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.build import update_index
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.index.rows import Provenance, index_rows, iter_index_rows
from rar_pipeline.defs.resources import LanceDBResource
from tests.core.index.test_build import POOLS, pool
from tests.fake_stores import FakeVectorStore
from tests.word_encoder import WordEncoder

PLAN = AnnPlan()
COLUMNS = ["did", "pools", "text", "row_hash"]


def _chunks(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[i : i + size] for i in range(0, len(frame), size)]


def _table(store, name: str) -> pd.DataFrame:
    if isinstance(store, FakeVectorStore):
        frame = store._tables[name]
    else:
        frame = store.connect().open_table(name).to_pandas()
    frame = frame[COLUMNS].assign(pools=[list(p) for p in frame["pools"]])
    return frame.sort_values("did").reset_index(drop=True)


def _stores(tmp_path: Path, kind: str):
    if kind == "fake":
        return FakeVectorStore(), FakeVectorStore()
    return (LanceDBResource(uri=str(tmp_path / "a")), LanceDBResource(uri=str(tmp_path / "b")))


@pytest.mark.parametrize("kind", ["lancedb", "fake"])
def test_updates_in_chunks_of_seven_leave_the_table_of_whole_updates(tmp_path, kind):
    whole, chunked = _stores(tmp_path, kind)
    config = INDEXED["none"]
    changed = {**POOLS, "task1_cand_pool": POOLS["task1_cand_pool"][:20] + pool("1x", 4)}
    for pools in (POOLS, POOLS, changed, {"task2_cand_pool": POOLS["task2_cand_pool"]}):
        rows = index_rows(config, pools, Provenance("none@1"))
        a = update_index(whole, "none", rows, WordEncoder(), tmp_path, PLAN)
        b = update_index(chunked, "none", iter(_chunks(rows, 7)), WordEncoder(), tmp_path, PLAN)
        assert (b.written, b.deleted, b.unchanged, b.by_pool) == (
            a.written, a.deleted, a.unchanged, a.by_pool
        )  # fmt: skip
        assert b.index["rows"] == a.index["rows"]
        pd.testing.assert_frame_equal(_table(chunked, "none"), _table(whole, "none"))


def test_a_second_chunked_update_embeds_nothing(tmp_path):
    store = FakeVectorStore()
    rows = index_rows(INDEXED["none"], POOLS, Provenance("none@1"))
    update_index(store, "none", iter(_chunks(rows, 7)), WordEncoder(), tmp_path, PLAN)
    encoder = WordEncoder()
    done = update_index(store, "none", iter(_chunks(rows, 7)), encoder, tmp_path, PLAN)
    assert (done.written, done.deleted, done.unchanged) == (0, 0, 50)
    assert encoder.embedded == []


@pytest.mark.parametrize("config", ["none", "full"])
def test_rows_read_from_the_tables_in_chunks_equal_rows_from_records(tmp_path, config):
    pools, enhanced, texts, records = {}, {}, {}, {}
    shards = {
        s: [*c, Candidate(f"{s}:img", Modality.IMAGE, None, "i.png")] for s, c in POOLS.items()
    }
    # a union pool holds every candidate again, in another order
    shards["union_pool"] = [c for candidates in reversed(shards.values()) for c in candidates]
    for shard, candidates in shards.items():
        records[shard] = candidates
        pools[shard] = write_parquet(records_to_frame(candidates, Candidate),
                                     tmp_path / "pool" / f"{shard}.parquet")  # fmt: skip
        frame = pd.DataFrame(
            {
                "did": [c.did for c in candidates],
                "enhanced_txt": [None if c.txt is None else c.txt.upper() for c in candidates],
            }
        )
        enhanced[shard] = write_parquet(frame, tmp_path / "enhanced" / f"{shard}.parquet")
        texts.update(zip(*(pd.read_parquet(enhanced[shard])[c] for c in frame), strict=True))
    provenance = Provenance("full@1", "v1", "fake/fake")
    expected = index_rows(INDEXED[config], records, provenance, texts)
    chunked = pd.concat(
        list(iter_index_rows(INDEXED[config], pools, provenance, enhanced, chunk_rows=7)),
        ignore_index=True,
    )
    assert chunked["row_hash"].tolist() == expected["row_hash"].tolist()
    assert chunked["did"].tolist() == expected["did"].tolist()
    assert chunked["pools"].tolist() == expected["pools"].tolist()
    assert len(chunked) == len(records["union_pool"])  # one row per candidate
    assert set(map(tuple, chunked["pools"])) == {
        ("task1_cand_pool", "union_pool"), ("task2_cand_pool", "union_pool")
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["lancedb", "fake"])
def test_the_tables_keys_read_in_batches_of_three_give_the_diff_of_one_batch(
    tmp_path, kind, monkeypatch
):
    from rar_pipeline.defs.resources import lancedb as store_module

    whole, batched = _stores(tmp_path, kind)
    changed = {**POOLS, "task1_cand_pool": POOLS["task1_cand_pool"][:20] + pool("1x", 4)}
    most_batches = 0
    for pools in (POOLS, changed, {"task2_cand_pool": POOLS["task2_cand_pool"]}):
        rows = index_rows(INDEXED["none"], pools, Provenance("none@1"))
        a = update_index(whole, "none", rows, WordEncoder(), tmp_path, PLAN)
        with monkeypatch.context() as patch:
            patch.setattr(store_module, "HASH_BATCH_ROWS", 3)
            batches = list(batched.row_hashes("none"))
            assert all(batch.num_rows <= 3 for batch in batches)
            most_batches = max(most_batches, len(batches))
            b = update_index(batched, "none", rows, WordEncoder(), tmp_path, PLAN)
        assert (b.written, b.deleted, b.unchanged, b.by_pool) == (
            a.written, a.deleted, a.unchanged, a.by_pool
        )  # fmt: skip
        pd.testing.assert_frame_equal(_table(batched, "none"), _table(whole, "none"))
    assert most_batches > 1


@pytest.mark.parametrize("kind", ["lancedb", "fake"])
def test_a_missing_table_has_no_keys_but_their_schema(tmp_path, kind):
    store = _stores(tmp_path, kind)[0]
    keys = store.row_hashes("nothing").read_all()
    assert keys.num_rows == 0 and keys.column_names == ["did", "pools", "row_hash"]
