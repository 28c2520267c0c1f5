"""The M-BEIR reader: every bad row is quarantined with its reason; good rows go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.mbeir import (
    LayoutError,
    candidate_to_json,
    discover,
    query_to_json,
    resolve_in_root,
    write_jsonl,
)
from rar_pipeline.core.corpus.readers import (
    read_candidates,
    read_instructions,
    read_qrels,
    read_queries,
)
from rar_pipeline.core.corpus.records import Candidate, Modality, Query, Reason
from tests.conftest import MINI

POOL = MINI / "cand_pool/local/mbeir_mini_task0_cand_pool.jsonl"
QUERIES = MINI / "query/test/mbeir_mini_task0_test.jsonl"

# line -> reason, for every bad line of the fixture pool
POOL_EXPECTED = {
    4: Reason.BAD_JSON,
    5: Reason.NOT_AN_OBJECT,
    6: Reason.MISSING_FIELD,
    7: Reason.WRONG_TYPE,
    8: Reason.UNKNOWN_MODALITY,
    9: Reason.MODALITY_MISMATCH,
    10: Reason.MODALITY_MISMATCH,
    11: Reason.IMAGE_MISSING,
    12: Reason.IMAGE_UNREADABLE,
    13: Reason.IMAGE_TRUNCATED,
    14: Reason.IMAGE_TOO_LARGE,
    15: Reason.DUPLICATE_ID,
    16: Reason.PATH_ESCAPES_ROOT,
    17: Reason.PATH_ESCAPES_ROOT,
}


def test_discover_names_partitions_after_files():
    layout = discover(MINI)
    assert set(layout.pools) == {
        "mbeir_mini_task0_cand_pool",
        "mbeir_mini_task6_cand_pool",
        "mbeir_union_train_cand_pool",
    }
    assert set(layout.queries) == {"mbeir_mini_task0", "mbeir_mini_task6"}
    assert set(layout.queries["mbeir_mini_task0"]) == {"train", "test"}
    assert set(layout.qrels["mbeir_mini_task0"]) == {"test"}
    assert layout.instructions == MINI.resolve() / "instructions" / "query_instructions.tsv"


def test_discover_refuses_a_folder_that_is_not_mbeir(tmp_path: Path):
    with pytest.raises(LayoutError, match="no M-BEIR files"):
        discover(tmp_path)
    with pytest.raises(LayoutError, match="not a directory"):
        discover(tmp_path / "missing")


def test_discover_refuses_two_pools_with_one_name(tmp_path: Path):
    for folder in ("local", "global"):
        write_jsonl(tmp_path / "cand_pool" / folder / "mbeir_x_task0_cand_pool.jsonl", [])
    write_jsonl(tmp_path / "query" / "test" / "mbeir_x_task0_test.jsonl", [])
    with pytest.raises(LayoutError, match="both named"):
        discover(tmp_path)


def test_each_bad_pool_row_is_quarantined_with_its_reason_and_line():
    result = read_candidates(POOL, MINI)
    got = {q.line: q.reason for q in result.quarantined}
    assert got == POOL_EXPECTED
    for q in result.quarantined:
        assert q.source == "cand_pool/local/mbeir_mini_task0_cand_pool.jsonl"
        assert q.detail
        assert q.raw  # the offending line is kept for the quarantine file


def test_good_pool_rows_survive_in_file_order_with_their_fields():
    result = read_candidates(POOL, MINI)
    assert [c.did for c in result.rows] == ["77:1", "77:2", "77:3", "77:14"]
    red, blue, green, text = result.rows
    assert red == Candidate("77:1", Modality.IMAGE, None, "mbeir_images/mini/red_circle.png")
    assert json.loads(blue.src_content) == {"source": "handmade"}
    assert green.modality is Modality.IMAGE_TEXT and green.txt.startswith("Green circle")
    assert text.modality is Modality.TEXT and text.img_path is None
    assert result.total == len(result.rows) + len(POOL_EXPECTED)


def test_the_duplicate_keeps_the_first_definition():
    result = read_candidates(POOL, MINI)
    duplicate = next(q for q in result.quarantined if q.reason is Reason.DUPLICATE_ID)
    assert duplicate.row_id == "77:2" and "line 2" in duplicate.detail


def test_pixel_limit_is_configurable():
    tight = ImageCheck(max_pixels=48 * 40 - 1)
    result = read_candidates(POOL, MINI, image_check=tight)
    assert "77:1" not in {c.did for c in result.rows}
    assert {q.row_id for q in result.quarantined if q.reason is Reason.IMAGE_TOO_LARGE} >= {
        "77:1",
        "77:2",
        "77:11",
    }


def test_cheaper_image_checks_trade_depth_for_speed():
    exists = read_candidates(POOL, MINI, image_check=ImageCheck(level=ImageCheckLevel.EXISTS))
    reasons = {q.reason for q in exists.quarantined}
    assert Reason.IMAGE_MISSING in reasons
    assert not reasons & {Reason.IMAGE_TRUNCATED, Reason.IMAGE_UNREADABLE}
    header = read_candidates(POOL, MINI, image_check=ImageCheck(level=ImageCheckLevel.HEADER))
    header_reasons = {q.reason for q in header.quarantined}
    assert Reason.IMAGE_UNREADABLE in header_reasons and Reason.IMAGE_TOO_LARGE in header_reasons
    assert Reason.IMAGE_TRUNCATED not in header_reasons  # only a full decode sees that
    off = read_candidates(POOL, MINI, image_check=ImageCheck(level=ImageCheckLevel.OFF))
    assert Reason.IMAGE_MISSING not in {q.reason for q in off.quarantined}
    # escaping paths are refused whatever the image check level
    assert Reason.PATH_ESCAPES_ROOT in {q.reason for q in off.quarantined}


def test_queries_are_checked_against_known_candidates():
    known = {c.did for c in read_candidates(POOL, MINI).rows}
    result = read_queries(QUERIES, MINI, split="test", known_dids=known)
    got = {q.line: q.reason for q in result.quarantined}
    assert got == {
        3: Reason.MISSING_FIELD,  # no pos_cand_list
        4: Reason.UNKNOWN_REFERENCE,  # positive 77:999 exists nowhere
        5: Reason.WRONG_TYPE,  # pos_cand_list is a string
        6: Reason.MODALITY_MISMATCH,  # text query without text
        7: Reason.DUPLICATE_ID,
        8: Reason.UNKNOWN_REFERENCE,  # 77:9 was itself quarantined (unreadable image)
        9: Reason.WRONG_TYPE,  # task_id "zero"
    }
    assert [q.qid for q in result.rows] == ["77:2000", "77:2001"]
    assert all(q.split == "test" for q in result.rows)


def test_positives_may_be_strings_or_did_objects():
    train = MINI / "query/train/mbeir_mini_task0_train.jsonl"
    result = read_queries(train, MINI, split="train", known_dids={"77:100", "77:101"})
    assert [q.pos_cand_list for q in result.rows] == [("77:100",), ("77:100",)]
    assert result.rows[1].neg_cand_list == ("77:101",)


def test_without_known_ids_the_reference_check_is_skipped():
    result = read_queries(QUERIES, MINI, split="test", known_dids=None)
    assert Reason.UNKNOWN_REFERENCE not in {q.reason for q in result.quarantined}


def test_image_text_queries_accept_spaced_modality_and_check_images():
    path = MINI / "query/test/mbeir_mini_task6_test.jsonl"
    result = read_queries(path, MINI, split="test", known_dids={"77:20", "77:21", "77:22"})
    assert [q.qid for q in result.rows] == ["77:3000", "77:3001", "77:3004"]
    assert result.rows[-1].modality is Modality.IMAGE_TEXT
    assert {q.line: q.reason for q in result.quarantined} == {
        3: Reason.PATH_ESCAPES_ROOT,
        4: Reason.IMAGE_TRUNCATED,
    }


def test_qrels_lines_are_validated():
    path = MINI / "qrels/test/mbeir_mini_task0_test_qrels.txt"
    result = read_qrels(path, MINI, known_qids={"77:2000", "77:2001"}, known_dids={"77:1", "77:2"})
    assert [(r.qid, r.did, r.relevance, r.task_id) for r in result.rows] == [
        ("77:2000", "77:1", 1, 0),
        ("77:2001", "77:2", 1, 0),
    ]
    assert {q.line: q.reason for q in result.quarantined} == {
        3: Reason.DUPLICATE_ID,
        4: Reason.BAD_QREL_LINE,
        5: Reason.BAD_QREL_LINE,
        6: Reason.UNKNOWN_REFERENCE,
        7: Reason.UNKNOWN_REFERENCE,
        8: Reason.UNKNOWN_REFERENCE,
    }


def test_instructions_follow_uniir_columns():
    result = read_instructions(MINI / "instructions/query_instructions.tsv", MINI)
    assert [(i.query_modality, i.cand_modality, i.dataset_id) for i in result.rows] == [
        ("text", "image", "77"),
        ("image,text", "text", "77"),
    ]
    assert result.rows[0].prompts == ("Find the photo described.", "Retrieve a matching image.")
    assert [q.line for q in result.quarantined] == [4]


def test_instructions_with_a_wrong_header_raise(tmp_path: Path):
    path = tmp_path / "query_instructions.tsv"
    path.write_text("a\tb\n")
    with pytest.raises(LayoutError, match="header"):
        read_instructions(path, tmp_path)


@pytest.mark.parametrize(
    "bad", ["/abs/x.png", "../x.png", "a/../../x.png", "", "C:/x.png", "\\\\server\\x.png"]
)
def test_paths_from_data_files_stay_inside_the_root(tmp_path: Path, bad: str):
    with pytest.raises(ValueError):
        resolve_in_root(tmp_path, bad)


def test_paths_inside_the_root_resolve(tmp_path: Path):
    assert resolve_in_root(tmp_path, "imgs/../imgs/a.png") == tmp_path / "imgs" / "a.png"


def test_writers_round_trip_through_the_readers(tmp_path: Path):
    (tmp_path / "img").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "a.png")
    cands = [
        Candidate("1:1", Modality.IMAGE, None, "img/a.png"),
        Candidate("1:2", Modality.TEXT, "hello", None),
        Candidate("1:3", Modality.IMAGE_TEXT, "hi", "img/a.png", src_content='{"k": 1}'),
    ]
    queries = [
        Query("1:10", Modality.TEXT, "q", None, ("1:1", "1:2"), split="val", task_id=0),
        Query("1:11", Modality.IMAGE_TEXT, "q?", "img/a.png", ("1:3",), ("1:2",), "val", 8),
    ]
    write_jsonl(tmp_path / "pool.jsonl", map(candidate_to_json, cands))
    write_jsonl(tmp_path / "q.jsonl", map(query_to_json, queries))
    assert read_candidates(tmp_path / "pool.jsonl", tmp_path).rows == cands
    assert read_queries(tmp_path / "q.jsonl", tmp_path, split="val").rows == queries
