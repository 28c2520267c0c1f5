"""Updating an index, on real LanceDB (tmp folder) and on the fake store alike."""

from pathlib import Path

import numpy as np
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.build import update_index
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.index.rows import Provenance, index_rows
from rar_pipeline.core.search.store import TableSearch
from rar_pipeline.defs.resources import LanceDBResource
from tests.fake_stores import FakeVectorStore
from tests.word_encoder import WordEncoder

PLAN = AnnPlan()  # the demo-sized tables here stay below min_rows: exact search
WORDS = ["red", "blue", "green", "shoe", "hat", "lamp", "sofa", "desk", "wool", "oak"]


def pool(prefix: str, n: int) -> list[Candidate]:
    rng = np.random.default_rng(len(prefix) + n)
    return [
        Candidate(f"{prefix}:{i}", Modality.TEXT, " ".join(rng.choice(WORDS, 3)), None)
        for i in range(n)
    ]


POOLS = {"task1_cand_pool": pool("1", 30), "task2_cand_pool": pool("2", 20)}


@pytest.fixture(params=["lancedb", "fake"])
def store(request, tmp_path: Path):
    return (
        LanceDBResource(uri=str(tmp_path / "lance"))
        if request.param == "lancedb"
        else FakeVectorStore()
    )


def rows_for(pools, retriever="none@1"):
    return index_rows(INDEXED["none"], pools, Provenance(retriever))


def test_first_update_embeds_everything_and_builds_the_text_index(store, tmp_path):
    encoder = WordEncoder()
    done = update_index(store, "none", rows_for(POOLS), encoder, tmp_path, PLAN)
    assert (done.written, done.deleted, done.unchanged) == (50, 0, 0)
    assert len(encoder.embedded) == 50
    assert done.index["rows"] == 50 and done.index["fts_index"] == "text"
    assert done.index["vector_index"].startswith("none: exact search")


def test_a_second_update_embeds_nothing(store, tmp_path):
    update_index(store, "none", rows_for(POOLS), WordEncoder(), tmp_path, PLAN)
    encoder = WordEncoder()
    done = update_index(store, "none", rows_for(POOLS), encoder, tmp_path, PLAN)
    assert (done.written, done.deleted, done.unchanged) == (0, 0, 50)
    assert encoder.embedded == []


def test_a_new_pool_shard_embeds_only_its_candidates(store, tmp_path):
    update_index(store, "none", rows_for(POOLS), WordEncoder(), tmp_path, PLAN)
    encoder = WordEncoder()
    grown = {**POOLS, "task3_cand_pool": pool("3", 7)}
    done = update_index(store, "none", rows_for(grown), encoder, tmp_path, PLAN)
    assert done.written == 7 and done.unchanged == 50
    assert done.by_pool == {"task3_cand_pool": {"written": 7, "deleted": 0}}
    assert {i.txt for i in encoder.embedded} == {c.txt for c in grown["task3_cand_pool"]}
    assert done.index["rows"] == 57


def test_changed_and_removed_candidates_are_rewritten_and_deleted(store, tmp_path):
    update_index(store, "none", rows_for(POOLS), WordEncoder(), tmp_path, PLAN)
    first = POOLS["task1_cand_pool"]
    changed = {
        "task1_cand_pool": [Candidate(first[0].did, Modality.TEXT, "oak desk", None), *first[1:]],
        # task2 shrank to 5
        "task2_cand_pool": POOLS["task2_cand_pool"][:5],
    }
    encoder = WordEncoder()
    done = update_index(store, "none", rows_for(changed), encoder, tmp_path, PLAN)
    assert [i.txt for i in encoder.embedded] == ["oak desk"]
    assert (done.written, done.deleted, done.index["rows"]) == (1, 15, 35)
    hits = store.search_vectors(
        "none", WordEncoder().embed_text("oak desk"), 1, TableSearch("task1_cand_pool", PLAN)
    )
    assert hits["did"].tolist() == [first[0].did]


def test_a_retrained_retriever_reembeds_every_row(store, tmp_path):
    update_index(store, "none", rows_for(POOLS), WordEncoder(), tmp_path, PLAN)
    done = update_index(store, "none", rows_for(POOLS, "none@2"), WordEncoder(), tmp_path, PLAN)
    assert done.written == 50 and done.index["rows"] == 50


def test_search_stays_within_the_pool_asked_for(store, tmp_path):
    encoder = WordEncoder()
    update_index(store, "none", rows_for(POOLS), encoder, tmp_path, PLAN)
    query = encoder.embed_text("red shoe", "blue hat")
    hits = store.search_vectors("none", query, 5, TableSearch("task2_cand_pool", PLAN))
    assert {p for pools in hits["pools"] for p in pools} == {"task2_cand_pool"}
    assert hits.groupby("query_index").size().tolist() == [5, 5]
    for _, h in hits.groupby("query_index"):
        assert np.all(np.diff(h["score"].to_numpy()) <= 0)
    everywhere = store.search_vectors("none", query, 60, TableSearch(None, PLAN))
    assert {p for pools in everywhere["pools"] for p in pools} == set(POOLS)


def test_a_union_pool_adds_no_row_and_no_embedding(store, tmp_path):
    update_index(store, "none", rows_for(POOLS), WordEncoder(), tmp_path, PLAN)
    union = [c for candidates in POOLS.values() for c in candidates]
    encoder = WordEncoder()
    done = update_index(store, "none", rows_for({**POOLS, "union_pool": union}), encoder,
                        tmp_path, PLAN)  # fmt: skip
    assert encoder.embedded == [] and (done.written, done.repooled) == (0, 50)
    assert done.index["rows"] == 50
    first = POOLS["task1_cand_pool"][0]
    query = WordEncoder().embed_text(first.txt)
    for pool in ("task1_cand_pool", "union_pool"):
        hits = store.search_vectors("none", query, 50, TableSearch(pool, PLAN))
        assert first.did in set(hits["did"]) and len(hits) == len(union if "union" in pool
                                                                  else POOLS[pool])  # fmt: skip
    alone = store.search_vectors("none", query, 50, TableSearch("task2_cand_pool", PLAN))
    assert first.did not in set(alone["did"])
    # the union pool removed again: the rows stay, their pools shrink
    done = update_index(store, "none", rows_for(POOLS), WordEncoder(), tmp_path, PLAN)
    assert (done.written, done.deleted, done.repooled) == (0, 0, 50)
    assert store.search_vectors("none", query, 50, TableSearch("union_pool", PLAN)).empty


def test_scores_are_cosine_similarities(store, tmp_path):
    encoder = WordEncoder()
    rows = rows_for(POOLS)
    update_index(store, "none", rows, encoder, tmp_path, PLAN)
    query = encoder.embed_text("green lamp wool")
    hits = store.search_vectors("none", query, 50, TableSearch(None, PLAN))
    vectors = encoder.embed_text(*rows["text"])
    expected = dict(zip(rows["did"], vectors @ query[0], strict=True))
    for d, score in zip(hits["did"], hits["score"], strict=True):
        assert score == pytest.approx(expected[d], abs=1e-5)


def test_lancedb_builds_an_ann_index_once_the_table_is_big_enough(tmp_path):
    store = LanceDBResource(uri=str(tmp_path / "lance"))
    plan = AnnPlan(min_rows=300, rows_per_partition=300)
    big = {"task1_cand_pool": pool("1", 400)}
    encoder = WordEncoder()
    done = update_index(store, "none", rows_for(big), encoder, tmp_path, plan)
    assert done.index["vector_index"] == plan.index_type
    assert done.index["index_params"]["num_partitions"] == 2
    table = store.connect().open_table("none")
    assert {i.index_type for i in table.list_indices()} == {
        "FTS", plan.config_class, "LabelList", "Bitmap"  # pools and modality filters
    }  # fmt: skip
    # a later update's rows are found at once (exact search beside the index)
    big["task1_cand_pool"].append(Candidate("1:new", Modality.TEXT, "zebra zebra zebra", None))
    update_index(store, "none", rows_for(big), encoder, tmp_path, plan)
    hits = store.search_vectors(
        "none", encoder.embed_text("zebra"), 1, TableSearch("task1_cand_pool", plan)
    )
    assert hits["did"].tolist() == ["1:new"]


def test_lancedb_updates_create_missing_indexes_and_never_rewrite_them(tmp_path, monkeypatch):
    import lancedb.table

    def refuse(*args, **kwargs):
        raise AssertionError("an update optimized the table")

    monkeypatch.setattr(lancedb.table.LanceTable, "optimize", refuse)
    store = LanceDBResource(uri=str(tmp_path / "lance"))
    plan = AnnPlan(min_rows=300, rows_per_partition=300)
    big = {"task1_cand_pool": pool("1", 400)}
    update_index(store, "none", iter([rows_for(big)[:200], rows_for(big)[200:]]),
                 WordEncoder(), tmp_path, plan)  # fmt: skip
    # the first build creates both indexes over every row
    assert store.index_health("none").unindexed_rows == 0
    unchanged = update_index(store, "none", rows_for(big), WordEncoder(), tmp_path, plan)
    assert unchanged.written == 0 and unchanged.index["unindexed_rows"] == 0
    big["task1_cand_pool"].append(Candidate("1:new", Modality.TEXT, "zebra zebra zebra", None))
    done = update_index(store, "none", rows_for(big), WordEncoder(), tmp_path, plan)
    # left for maintenance (tests/core/index/test_maintenance.py), searched exactly meanwhile
    assert done.index["unindexed_rows"] == 1


class PickyEncoder(WordEncoder):
    """Fails on any batch holding an image named broken*, as PIL fails on a rotten file."""

    def embed(self, items):
        if any(i.image_path is not None and i.image_path.name.startswith("broken") for i in items):
            raise OSError("cannot identify image file")
        return super().embed(items)


def test_an_unreadable_image_never_fails_the_update(store, tmp_path):
    pools = {
        "p": [
            Candidate("ok", Modality.TEXT, "red shoe", None),
            Candidate("both", Modality.IMAGE_TEXT, "blue hat", "img/broken_1.png"),
            Candidate("image_only", Modality.IMAGE, None, "img/broken_2.png"),
        ]
    }
    done = update_index(store, "none", rows_for(pools), PickyEncoder(), tmp_path, PLAN)
    assert done.written == 2 and done.index["rows"] == 2
    assert [(r["did"], r["reason"].split(":")[0]) for r in done.failed] == [
        ("image_only", "OSError")
    ]
    assert [r["did"] for r in done.degraded] == ["both"]  # embedded from its text
    hits = store.search_vectors(
        "none", WordEncoder().embed_text("blue hat"), 1, TableSearch("p", PLAN)
    )
    assert hits["did"].tolist() == ["both"]
    # the next update tries both again (the image may have been fixed), and only them
    again = update_index(store, "none", rows_for(pools), PickyEncoder(), tmp_path, PLAN)
    assert (again.written, again.unchanged, len(again.failed)) == (1, 1, 1)


def test_many_query_vectors_keep_their_own_results(tmp_path):
    """More queries than one LanceDB search call takes: each keeps its own hits."""
    real, fake = LanceDBResource(uri=str(tmp_path / "lance")), FakeVectorStore()
    encoder = WordEncoder()
    for store in (real, fake):
        update_index(store, "none", rows_for(POOLS), encoder, tmp_path, PLAN)
    rng = np.random.default_rng(0)
    queries = encoder.embed_text(*(" ".join(rng.choice(WORDS, 2)) for _ in range(600)))
    got = real.search_vectors("none", queries, 3, TableSearch("task1_cand_pool", PLAN))
    want = fake.search_vectors("none", queries, 3, TableSearch("task1_cand_pool", PLAN))
    assert got["query_index"].tolist() == want["query_index"].tolist()
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-5)
    assert real.search_vectors("none", queries[:0], 3, TableSearch(None, PLAN)).empty


def test_a_table_of_the_older_layout_is_rebuilt_and_says_why(tmp_path):
    store = LanceDBResource(uri=str(tmp_path / "lance"))
    old = rows_for(POOLS).assign(pool=lambda r: [p[0] for p in r["pools"]]).drop(columns="pools")
    vectors = WordEncoder().embed_text(*old["text"])
    store.connect().create_table("none", old.assign(vector=list(vectors)))  # a row per pool
    done = update_index(store, "none", rows_for(POOLS), WordEncoder(), tmp_path, PLAN)
    assert done.rebuilt == "ValueError: none holds rows of an older layout (no pools)"
    assert done.written == 50 and "pools" in store.connect().open_table("none").schema.names
