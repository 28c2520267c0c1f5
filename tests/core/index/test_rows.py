import numpy as np
import pyarrow as pa
import pytest

from rar_pipeline.core.corpus.records import Candidate, Modality
from rar_pipeline.core.index.configs import INDEXED
from rar_pipeline.core.index.rows import (
    ROW_COLUMNS,
    ROW_HASHES,
    Provenance,
    arrow_rows,
    diff_rows,
    index_rows,
)

PROVENANCE = Provenance("none@abc", prompt_version="p1", vlm_model="offline/offline")
HELD = ROW_HASHES.names  # what a table's rows are diffed by: did, pools, row_hash


def cand(did: str, txt: str | None = None, img: str | None = None) -> Candidate:
    modality = "image,text" if txt and img else ("image" if img else "text")
    return Candidate(did=did, modality=Modality(modality), txt=txt, img_path=img)


POOLS = {
    "task1_cand_pool": [cand("1:1", "a red shoe"), cand("1:2", None, "images/2.png")],
    "union_pool": [cand("1:1", "a red shoe"), cand("1:3", "a blue hat")],
}
ENHANCED = {"1:1": "shoe, red, leather", "1:2": "photo of a green lamp", "1:3": None}


class TestIndexRows:
    def test_one_row_per_candidate_listing_every_pool_that_holds_it(self):
        rows = index_rows(INDEXED["none"], POOLS, PROVENANCE)
        assert list(rows.columns) == ROW_COLUMNS
        assert list(zip(rows["did"], rows["pools"], strict=True)) == [
            ("1:1", ["task1_cand_pool", "union_pool"]), ("1:2", ["task1_cand_pool"]),
            ("1:3", ["union_pool"]),
        ]  # fmt: skip

    def test_none_embeds_the_original_text_and_records_no_vlm(self):
        rows = index_rows(INDEXED["none"], POOLS, PROVENANCE, ENHANCED).set_index("did")
        assert rows.loc["1:1", "text"] == "a red shoe"
        assert rows["enhanced_txt"].isna().all()
        assert rows["prompt_version"].isna().all() and rows["vlm_model"].isna().all()
        assert (rows["retriever"] == "none@abc").all()

    @pytest.mark.parametrize("config", ["corpus", "full", "inference-only"])
    def test_configs_reading_the_enhanced_corpus_embed_it(self, config):
        rows = index_rows(INDEXED[config], POOLS, PROVENANCE, ENHANCED).set_index("did")
        assert rows.loc["1:2", "text"] == "photo of a green lamp"
        assert rows.loc["1:1", "txt"] == "a red shoe"
        assert rows.loc["1:1", "enhanced_txt"] == "shoe, red, leather"
        # no enhanced text: the candidate's own
        assert rows.loc["1:3", "text"] == "a blue hat"
        assert (rows["prompt_version"] == "p1").all()
        assert (rows["vlm_model"] == "offline/offline").all()

    def test_a_config_reading_the_enhanced_corpus_needs_it(self):
        with pytest.raises(ValueError, match="needs the enhanced corpus"):
            index_rows(INDEXED["full"], POOLS, PROVENANCE)

    def test_row_hash_moves_with_what_made_the_vector_only(self):
        base = index_rows(INDEXED["full"], POOLS, PROVENANCE, ENHANCED)
        again = index_rows(INDEXED["full"], POOLS, PROVENANCE, ENHANCED)
        assert base["row_hash"].tolist() == again["row_hash"].tolist()
        edited = index_rows(INDEXED["full"], POOLS, PROVENANCE, {**ENHANCED, "1:3": "hat, blue"})
        changed = base["row_hash"] != edited["row_hash"]
        assert edited.loc[changed, "did"].tolist() == ["1:3"]
        retrained = index_rows(
            INDEXED["full"], POOLS, Provenance("full@new", "p1", "offline/offline"), ENHANCED
        )
        assert (base["row_hash"] != retrained["row_hash"]).all()
        # another pool holding a candidate changes its pools, not its vector
        regrouped = index_rows(INDEXED["full"], {"other": POOLS["union_pool"], **POOLS},
                               PROVENANCE, ENHANCED)  # fmt: skip
        assert sorted(regrouped["row_hash"]) == sorted(base["row_hash"])


class TestDiffRows:
    def test_an_empty_table_takes_every_row(self):
        rows = index_rows(INDEXED["none"], POOLS, PROVENANCE)
        diff = diff_rows(rows.iloc[0:0][HELD], rows)
        assert len(diff.write) == len(rows) and diff.delete.empty and diff.unchanged == 0

    def test_nothing_changed_nothing_to_do(self):
        rows = index_rows(INDEXED["none"], POOLS, PROVENANCE)
        diff = diff_rows(rows[HELD], rows)
        assert diff.write.empty and diff.delete.empty and diff.repool.empty
        assert diff.unchanged == len(rows)

    def test_a_new_pool_writes_only_its_new_candidates_and_repools_the_others(self):
        old = index_rows(INDEXED["none"], POOLS, PROVENANCE)
        task2 = [cand("2:1", "a sofa"), cand("2:2", "a desk"), cand("1:3", "a blue hat")]
        grown = index_rows(INDEXED["none"], {**POOLS, "task2_cand_pool": task2}, PROVENANCE)
        diff = diff_rows(old[HELD], grown)
        assert diff.write["did"].tolist() == ["2:1", "2:2"]
        assert diff.by_pool() == {"task2_cand_pool": {"written": 2, "deleted": 0}}
        # 1:3 keeps its vector; only its pools change
        assert diff.repool.to_dict("records") == [
            {"did": "1:3", "pools": ["union_pool", "task2_cand_pool"]}
        ]
        assert diff.unchanged == 3

    def test_a_removed_candidate_is_deleted_and_a_changed_one_rewritten(self):
        old = index_rows(INDEXED["none"], POOLS, PROVENANCE)
        pools = {
            "task1_cand_pool": [
                cand("1:1", "a red shoe, size 9"),
                cand("1:2", None, "images/2.png"),
            ],
            "union_pool": [cand("1:1", "a red shoe")],
        }
        diff = diff_rows(old[HELD], index_rows(INDEXED["none"], pools, PROVENANCE))
        assert diff.write["did"].tolist() == ["1:1"]
        assert diff.delete.to_dict("records") == [{"did": "1:3", "pools": ["union_pool"]}]
        assert diff.unchanged == 1
        assert diff.by_pool() == {
            "task1_cand_pool": {"written": 1, "deleted": 0},
            "union_pool": {"written": 1, "deleted": 1},
        }


def test_arrow_rows_has_a_fixed_schema_with_null_strings():
    rows = index_rows(INDEXED["none"], POOLS, PROVENANCE)
    table = arrow_rows(rows, np.ones((len(rows), 8), dtype=np.float32))
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 8)
    assert table.schema.field("pools").type == pa.list_(pa.string())
    assert all(table.schema.field(c).type == pa.string() for c in ROW_COLUMNS if c != "pools")
    assert table.column("txt").to_pylist()[1] is None  # an image-only candidate
    empty = arrow_rows(rows.iloc[0:0], np.zeros((0, 8), dtype=np.float32))
    assert empty.num_rows == 0 and empty.schema == table.schema
    with pytest.raises(ValueError, match="vectors"):
        arrow_rows(rows, np.ones((1, 8)))
