"""`Searcher`: queries enhanced as the pipeline enhances them, ranked over a config's table.

A word encoder and a scripted VLM keep it fast; the tables are real LanceDB and the fake.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.engine import DEFAULT_OPTIONS, EnhanceOptions
from rar_pipeline.core.enhance.outputs import Enhancer, rewrite_queries
from rar_pipeline.core.index.ann import AnnPlan
from rar_pipeline.core.index.build import update_index
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.index.rows import Provenance, index_rows
from rar_pipeline.core.search.enhance import QueryEnhancer
from rar_pipeline.core.search.query import IndexUnavailable, SearchError, SearchQuery
from rar_pipeline.core.search.searcher import Searcher
from rar_pipeline.defs.resources import LanceDBResource
from tests.fake_stores import FakeVectorStore
from tests.fake_vlm import FakeVLM
from tests.word_encoder import WordEncoder

PLAN = AnnPlan()
POOLS = {
    "shop_task0_cand_pool": [
        Candidate("p:1", Modality.TEXT, "red wool hat from Brofell", None),
        Candidate("p:2", Modality.TEXT, "blue oak desk from Kestro", None),
        Candidate("p:3", Modality.IMAGE, None, "images/lamp.png"),
        Candidate("p:4", Modality.TEXT, "green steel lamp sold by Quorble", None),
    ],
    "union_test_cand_pool": [
        Candidate("p:1", Modality.TEXT, "red wool hat from Brofell", None),
        Candidate("p:5", Modality.TEXT, "Quorble was founded by Mira Salo in 1962", None),
    ],
}


@pytest.fixture(params=["lancedb", "fake"])
def store(request, tmp_path):
    if request.param == "lancedb":
        return LanceDBResource(uri=str(tmp_path / "lancedb"))
    return FakeVectorStore()


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "green").save(tmp_path / "data" / "images" / "lamp.png")
    Image.new("RGB", (8, 8), "brown").save(tmp_path / "query.png")
    return tmp_path / "data"


def build(store, root, config: str, encoder: WordEncoder) -> None:
    captions = {"p:3": "a green lamp"}
    rows = index_rows(INDEXED[config], POOLS, Provenance(f"{config}@abc"), captions)
    update_index(store, INDEXED[config].table, rows, encoder, root, PLAN)


@pytest.fixture
def vlm() -> FakeVLM:
    return FakeVLM()


def searcher(store, root, tmp_path, vlm, config="full", options=DEFAULT_OPTIONS) -> Searcher:
    encoder = WordEncoder()
    build(store, root, config, encoder)
    enhancer = QueryEnhancer(lambda: vlm, tmp_path / "cache.sqlite", options)
    return Searcher(INDEXED[config], encoder, f"{config}@abc", store, enhancer, PLAN)


class TestAnsweringQueries:
    def test_a_text_query_finds_the_candidate_sharing_its_words(self, store, root, tmp_path, vlm):
        result = searcher(store, root, tmp_path, vlm).search(SearchQuery("red wool hat"), k=3)
        assert result.hits[0].did == "p:1"
        assert [h.rank for h in result.hits] == [1, 2, 3]
        assert result.query_type == "text" and result.enhancement == "passthrough"
        assert result.searched_text == "red wool hat" and not vlm.requests

    def test_each_candidate_is_listed_once_across_pools(self, store, root, tmp_path, vlm):
        result = searcher(store, root, tmp_path, vlm).search(SearchQuery("red wool hat"), k=10)
        dids = [h.did for h in result.hits]
        assert sorted(dids) == ["p:1", "p:2", "p:3", "p:4", "p:5"]

    @pytest.mark.parametrize("hybrid", [False, True])
    def test_candidates_in_many_pools_still_fill_k_results(self, store, root, hybrid):
        # every candidate in four pools: the first 2k rows hold at most k/2 candidates
        # (hybrid's fused list was not widened: it came back short)
        shared = [Candidate(f"c:{i}", Modality.TEXT, f"wool hat number {i}", None)
                  for i in range(12)]  # fmt: skip
        pools = {f"pool_{p}": shared for p in range(4)}
        rows = index_rows(INDEXED["none"], pools, Provenance("none@abc"))
        update_index(store, "none", rows, WordEncoder(), root, PLAN)
        s = Searcher(INDEXED["none"], WordEncoder(), "none@abc", store, None, PLAN)
        result = s.search(SearchQuery("wool hat"), k=8, hybrid=hybrid)
        assert result.hybrid == hybrid
        assert len({h.did for h in result.hits}) == len(result.hits) == 8
        assert len(s.search(SearchQuery("wool hat"), k=50, hybrid=hybrid).hits) == 12

    @pytest.mark.parametrize(
        "text",
        ['"red wool hat"', "red AND hat", "red OR", "(hat", "txt:hat", "ha*", 'hat"', "+-!~^:",
         "NOT", "' OR 1=1 --", "\\"],
    )  # fmt: skip
    def test_hybrid_takes_any_text_as_plain_words(self, store, root, tmp_path, vlm, text):
        # a quoted phrase was a LanceDB error ("position is not found ... phrase queries")
        s = searcher(store, root, tmp_path, vlm, config="none")
        result = s.search(SearchQuery(text), k=3, hybrid=True)
        assert len(result.hits) == 3
        if "hat" in text:
            assert result.hits[0].did == "p:1"

    def test_a_pool_and_a_modality_narrow_the_candidates(self, store, root, tmp_path, vlm):
        s = searcher(store, root, tmp_path, vlm)
        union = s.search(SearchQuery("red wool hat"), k=10, pool="union_test_cand_pool")
        assert {h.did for h in union.hits} == {"p:1", "p:5"}
        assert {h.pool for h in union.hits} == {"union_test_cand_pool"}
        images = s.search(SearchQuery("green lamp"), k=10, modality=["image"])
        assert [h.did for h in images.hits] == ["p:3"]
        assert images.hits[0].text == "a green lamp"  # what the index embedded: the caption
        assert images.hits[0].img_path == "images/lamp.png"

    def test_hybrid_fuses_dense_and_full_text_hits(self, store, root, tmp_path, vlm):
        s = searcher(store, root, tmp_path, vlm)
        result = s.search(SearchQuery("Quorble founded"), k=3, hybrid=True)
        assert result.hybrid and result.hits[0].did == "p:5"
        # fused relevance: every hit scores at most two reciprocal ranks, 2 / (60 + 1)
        assert all(0 < h.score <= 2 / 61 + 1e-9 for h in result.hits)
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits),
                                                        reverse=True)  # fmt: skip

    def test_a_batch_answers_as_single_queries_do(self, store, root, tmp_path, vlm):
        s = searcher(store, root, tmp_path, vlm)
        queries = [SearchQuery("red wool hat"), SearchQuery("oak desk"), SearchQuery("lamp")]
        batch = s.search_many(queries, k=3)
        for query, result in zip(queries, batch, strict=True):
            assert [h.did for h in result.hits] == [h.did for h in s.search(query, 3).hits]


class TestEnhancement:
    def test_an_image_question_is_rewritten_with_the_image_then_searched(
        self, store, root, tmp_path, vlm
    ):
        s = searcher(store, root, tmp_path, vlm)
        query = SearchQuery("who founded Quorble?", tmp_path / "query.png")
        result = s.search(query, k=2)
        assert result.query_type == "qa" and result.enhancement == "generated"
        assert result.searched_text == "who founded Quorble (seen in query)?"
        assert result.vlm_calls == 1 and vlm.requests[0].image_path == tmp_path / "query.png"
        assert result.hits[0].did == "p:5"

    def test_the_rewrite_is_the_one_the_enhanced_queries_asset_makes(
        self, store, root, tmp_path, vlm
    ):
        query = SearchQuery("who founded Quorble?", tmp_path / "query.png")
        searched = searcher(store, root, tmp_path, vlm).search(query).searched_text
        cache = EnhancementCache(tmp_path / "other.sqlite")
        enhancer = Enhancer(FakeVLM(), cache, EnhanceOptions(), tmp_path)
        asset = rewrite_queries([query.record("x")], enhancer, task="t")
        assert asset.merged.frame["enhanced_txt"].tolist() == [searched]

    def test_a_query_seen_before_costs_no_vlm_call(self, store, root, tmp_path, vlm):
        s = searcher(store, root, tmp_path, vlm)
        query = SearchQuery("who founded Quorble?", tmp_path / "query.png")
        first = s.search(query)
        # the same words and image bytes, from another file: the cache key is the content
        copy = tmp_path / "copy" / "same.png"
        copy.parent.mkdir()
        copy.write_bytes((tmp_path / "query.png").read_bytes())
        again = s.search(SearchQuery("who founded Quorble?", copy))
        assert len(vlm.requests) == 1
        assert again.enhancement == "cached" and again.vlm_calls == 0
        assert again.searched_text == first.searched_text

    def test_a_task_override_routes_the_query_as_the_pipeline_would(
        self, store, root, tmp_path, vlm
    ):
        options = EnhanceOptions(query_type_overrides={"shop_task7": "modification"})
        s = searcher(store, root, tmp_path, vlm, options=options)
        image = tmp_path / "query.png"
        plain = s.search(SearchQuery("is it green?", image))
        routed = s.search(SearchQuery("is it green?", image, task="shop_task7"))
        assert (plain.query_type, routed.query_type) == ("qa", "modification")
        # modification prompts never see the image
        assert vlm.requests[-1].image_path is None

    def test_configs_without_enhanced_queries_never_call_the_vlm(self, store, root, tmp_path, vlm):
        s = searcher(store, root, tmp_path, vlm, config="none")
        result = s.search(SearchQuery("who founded Quorble?", tmp_path / "query.png"))
        assert result.enhancement == "not used" and result.query_type == "qa"
        assert result.searched_text == "who founded Quorble?" and not vlm.requests

    def test_a_failed_rewrite_falls_back_to_the_query_text_and_says_so(self, store, root, tmp_path):
        vlm = FakeVLM(fail_first={"Quorble": 99})
        s = searcher(store, root, tmp_path, vlm)
        result = s.search(SearchQuery("who founded Quorble?", tmp_path / "query.png"))
        assert result.enhancement == "failed"
        assert result.searched_text == "who founded Quorble?"
        assert any("enhancement failed" in w for w in result.warnings)


class TestErrors:
    def test_a_missing_index_names_the_asset_to_materialize(self, store, tmp_path, vlm):
        enhancer = QueryEnhancer(lambda: vlm, tmp_path / "c.sqlite", EnhanceOptions())
        with pytest.raises(SearchError, match="lancedb_index_inference_only"):
            Searcher(INDEXED["inference-only"], WordEncoder(), "x", store, enhancer, PLAN)

    def test_bad_options_are_refused_clearly(self, store, root, tmp_path, vlm):
        s = searcher(store, root, tmp_path, vlm)
        with pytest.raises(SearchError, match="no pool 'nope'"):
            s.search(SearchQuery("hat"), pool="nope")
        with pytest.raises(SearchError, match="unknown modality"):
            s.search(SearchQuery("hat"), modality=["video"])
        for k in (0, 101, 4611686018427387904):  # the last was an OverflowError in LanceDB
            with pytest.raises(SearchError, match="k must be between 1 and 100"):
                s.search(SearchQuery("hat"), k=k)

    def test_an_index_from_another_checkpoint_is_flagged(self, store, root, tmp_path, vlm):
        encoder = WordEncoder()
        build(store, root, "full", encoder)
        enhancer = QueryEnhancer(lambda: vlm, tmp_path / "c.sqlite", EnhanceOptions())
        s = Searcher(INDEXED["full"], encoder, "full@retrained", store, enhancer, PLAN)
        result = s.search(SearchQuery("hat"))
        assert any("materialize lancedb_index_full" in w for w in result.warnings)

    def test_an_index_trained_retriever_made_is_never_searched_untrained(self, store, root):
        # its checkpoint gone, the searcher was given the base encoder and answered with it
        build(store, root, "none", WordEncoder())
        with pytest.raises(IndexUnavailable, match="none@abc") as raised:
            Searcher(INDEXED["none"], WordEncoder(), "none@untrained", store, None, PLAN)
        assert raised.value.status == 409
        assert raised.value.asset == "retriever_checkpoint_none"
        untrained = index_rows(INDEXED["none"], POOLS, Provenance("none@untrained"))
        update_index(store, "none", untrained, WordEncoder(), root, PLAN)
        s = Searcher(INDEXED["none"], WordEncoder(), "none@untrained", store, None, PLAN)
        assert s.search(SearchQuery("red wool hat")).hits[0].did == "p:1"

    def test_a_table_that_cannot_be_read_names_the_index_to_materialize(self, root, tmp_path):
        store = LanceDBResource(uri=str(tmp_path / "lancedb"))
        build(store, root, "none", WordEncoder())
        s = Searcher(INDEXED["none"], WordEncoder(), "none@abc", store, None, PLAN)
        for data in (tmp_path / "lancedb" / "none.lance" / "data").iterdir():
            data.unlink()  # a half-deleted copy: LanceDB raises RuntimeError
        for hybrid in (False, True):
            with pytest.raises(IndexUnavailable, match="none index cannot be read") as raised:
                s.search(SearchQuery("red wool hat"), hybrid=hybrid)
            assert raised.value.asset == "lancedb_index_none" and raised.value.status == 409
            assert "materialize lancedb_index_none" in str(raised.value)
        # materializing it repairs it: the update drops the table it cannot read
        done = update_index(store, "none", index_rows(INDEXED["none"], POOLS,
                            Provenance("none@abc")), WordEncoder(), root, PLAN)  # fmt: skip
        assert done.rebuilt and "RuntimeError" in done.rebuilt and done.written == 5  # candidates
        again = Searcher(INDEXED["none"], WordEncoder(), "none@abc", store, None, PLAN)
        assert again.search(SearchQuery("red wool hat")).hits[0].did == "p:1"

    def test_an_unembeddable_query_ranks_nothing_and_says_why(self, store, root, tmp_path, vlm):
        class Broken(WordEncoder):
            def embed(self, items):
                if any(i.image_path for i in items):
                    raise OSError("image unreadable")
                return super().embed(items)

        build(store, root, "none", WordEncoder())
        s = Searcher(INDEXED["none"], Broken(), "none@abc", store, None, PLAN)
        result = s.search(SearchQuery(None, tmp_path / "query.png"))
        assert result.hits == [] and "could not be embedded" in result.warnings[0]
        assert np.isfinite(result.seconds["total"])
