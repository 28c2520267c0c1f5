"""Tabular forms of corpus records: frames, Parquet files, quarantine files, summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from rar_pipeline.core.corpus.records import (
    Candidate,
    Modality,
    Qrel,
    QuarantinedRow,
    Query,
    ReadResult,
    Reason,
)
from rar_pipeline.core.corpus.tables import (
    frame_to_records,
    modality_counts,
    reason_counts,
    records_to_frame,
    summarize,
    write_parquet,
    write_quarantine,
)

CANDIDATES = [
    Candidate("1:1", Modality.IMAGE, None, "img/a.png"),
    Candidate("1:2", Modality.TEXT, "hello", None, src_content='{"k": 1}'),
    Candidate("1:3", Modality.IMAGE_TEXT, "hi", "img/b.png"),
]
QUERIES = [
    Query("1:10", Modality.TEXT, "q", None, ("1:1", "1:2"), split="val", task_id=3),
    Query("1:11", Modality.IMAGE, None, "img/a.png", ("1:3",), ("1:2",), "val", None),
    Query("1:12", Modality.IMAGE_TEXT, "q?", "img/b.png", ("1:3",), (), "test", 8, "{}"),
]


def _bad(line: int, reason: Reason, row_id: str | None = None) -> QuarantinedRow:
    return QuarantinedRow(
        source="cand_pool/local/x.jsonl",
        line=line,
        row_id=row_id,
        reason=reason,
        detail=f"problem on line {line}",
        raw=f'{{"line": {line}}}',
    )


# ---------------------------------------------------------------------------
# records_to_frame / frame_to_records


def test_a_frame_has_one_column_per_record_field_in_field_order():
    assert list(records_to_frame(CANDIDATES, Candidate).columns) == [
        "did",
        "modality",
        "txt",
        "img_path",
        "src_content",
    ]
    assert list(records_to_frame(QUERIES, Query).columns) == [
        "qid",
        "modality",
        "txt",
        "img_path",
        "pos_cand_list",
        "neg_cand_list",
        "split",
        "task_id",
        "src_content",
    ]


def test_an_empty_record_list_still_gets_every_column():
    frame = records_to_frame([], Qrel)
    assert frame.empty
    assert list(frame.columns) == ["qid", "did", "relevance", "task_id"]


def test_enums_become_their_plain_values_and_tuples_become_lists():
    frame = records_to_frame(QUERIES, Query)
    assert list(frame["modality"]) == ["text", "image", "image,text"]
    assert all(type(m) is str for m in frame["modality"])
    assert frame["pos_cand_list"][0] == ["1:1", "1:2"]
    assert frame["neg_cand_list"][2] == []


def test_candidates_round_trip_through_a_frame():
    assert frame_to_records(records_to_frame(CANDIDATES, Candidate), Candidate) == CANDIDATES


def test_queries_round_trip_through_a_frame():
    assert frame_to_records(records_to_frame(QUERIES, Query), Query) == QUERIES


def test_records_round_trip_through_parquet(tmp_path: Path):
    write_parquet(records_to_frame(CANDIDATES, Candidate), tmp_path / "c.parquet")
    write_parquet(records_to_frame(QUERIES, Query), tmp_path / "q.parquet")
    assert frame_to_records(pd.read_parquet(tmp_path / "c.parquet"), Candidate) == CANDIDATES
    assert frame_to_records(pd.read_parquet(tmp_path / "q.parquet"), Query) == QUERIES


def test_read_back_records_carry_enums_tuples_and_int_task_ids(tmp_path: Path):
    write_parquet(records_to_frame(QUERIES, Query), tmp_path / "q.parquet")
    first, second, _ = frame_to_records(pd.read_parquet(tmp_path / "q.parquet"), Query)
    assert first.modality is Modality.TEXT
    assert first.pos_cand_list == ("1:1", "1:2") and isinstance(first.pos_cand_list, tuple)
    assert type(first.task_id) is int and first.task_id == 3
    assert second.task_id is None


def test_a_task_id_column_with_gaps_becomes_float_in_the_frame_and_int_or_none_after():
    frame = records_to_frame(QUERIES, Query)
    assert frame["task_id"].dtype.kind == "f"  # pandas stores the gap as NaN
    assert math.isnan(frame["task_id"][1])
    assert [q.task_id for q in frame_to_records(frame, Query)] == [3, None, 8]


def test_missing_text_and_image_come_back_as_none_not_nan(tmp_path: Path):
    write_parquet(records_to_frame(CANDIDATES, Candidate), tmp_path / "c.parquet")
    image, text, _ = frame_to_records(pd.read_parquet(tmp_path / "c.parquet"), Candidate)
    assert image.txt is None and image.src_content is None
    assert text.img_path is None
    assert text.src_content == '{"k": 1}'


def test_a_null_candidate_list_reads_back_as_an_empty_tuple():
    frame = records_to_frame(QUERIES[:1], Query)
    frame.at[0, "neg_cand_list"] = None
    (query,) = frame_to_records(frame, Query)
    assert query.neg_cand_list == ()


def test_an_empty_frame_gives_no_records():
    assert frame_to_records(records_to_frame([], Query), Query) == []


# ---------------------------------------------------------------------------
# write_parquet


def test_write_parquet_creates_parent_folders_and_returns_the_path(tmp_path: Path):
    target = tmp_path / "a" / "b" / "pool.parquet"
    assert write_parquet(records_to_frame(CANDIDATES, Candidate), target) == target
    assert list(pd.read_parquet(target)["did"]) == ["1:1", "1:2", "1:3"]


def test_write_parquet_leaves_no_temporary_files_behind(tmp_path: Path):
    target = tmp_path / "out" / "pool.parquet"
    write_parquet(records_to_frame(CANDIDATES, Candidate), target)
    write_parquet(records_to_frame(CANDIDATES, Candidate), target)
    assert list(target.parent.iterdir()) == [target]


def test_write_parquet_overwrite_replaces_the_old_table(tmp_path: Path):
    target = tmp_path / "pool.parquet"
    write_parquet(records_to_frame(CANDIDATES, Candidate), target)
    write_parquet(records_to_frame(CANDIDATES[:1], Candidate), target)
    assert list(pd.read_parquet(target)["did"]) == ["1:1"]


def test_a_failed_write_keeps_the_old_table_and_leaves_no_temp_file(tmp_path: Path):
    target = tmp_path / "pool.parquet"
    write_parquet(records_to_frame(CANDIDATES, Candidate), target)
    unwritable = pd.DataFrame({"did": [1, "mixed types"]})  # pyarrow refuses this column
    with pytest.raises(pa.ArrowException):
        write_parquet(unwritable, target)
    assert list(tmp_path.iterdir()) == [target]
    assert list(pd.read_parquet(target)["did"]) == ["1:1", "1:2", "1:3"]


# ---------------------------------------------------------------------------
# write_quarantine


def test_write_quarantine_writes_one_json_object_per_line(tmp_path: Path):
    rows = [_bad(4, Reason.BAD_JSON), _bad(9, Reason.DUPLICATE_ID, row_id="1:2")]
    path = write_quarantine(rows, tmp_path / "quarantine" / "candidate_pool" / "x.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    objects = [json.loads(line) for line in lines]
    assert objects[1] == {
        "source": "cand_pool/local/x.jsonl",
        "line": 9,
        "row_id": "1:2",
        "reason": "duplicate_id",
        "detail": "problem on line 9",
        "raw": '{"line": 9}',
    }
    assert objects[0]["row_id"] is None and objects[0]["reason"] == "bad_json"


def test_raw_lines_with_newlines_stay_on_one_quarantine_line(tmp_path: Path):
    row = QuarantinedRow("q.jsonl", 1, None, Reason.BAD_JSON, "bad", 'a\nb\t"c"')
    path = write_quarantine([row], tmp_path / "q.jsonl")
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["raw"] == 'a\nb\t"c"'


def test_write_quarantine_with_no_rows_writes_an_empty_file(tmp_path: Path):
    path = write_quarantine([], tmp_path / "empty.jsonl")
    assert path.is_file() and path.read_text() == ""


def test_write_quarantine_replaces_a_previous_file(tmp_path: Path):
    path = tmp_path / "q.jsonl"
    write_quarantine([_bad(1, Reason.BAD_JSON), _bad(2, Reason.BAD_JSON)], path)
    write_quarantine([_bad(7, Reason.WRONG_TYPE)], path)
    assert [json.loads(x)["line"] for x in path.read_text().splitlines()] == [7]


# ---------------------------------------------------------------------------
# modality_counts, reason_counts, summarize


def test_modality_counts_list_every_modality_with_zero_where_absent():
    text_only = [c for c in CANDIDATES if c.modality is Modality.TEXT]
    assert modality_counts(text_only) == {"text": 1, "image": 0, "image,text": 0}
    assert modality_counts([]) == {"text": 0, "image": 0, "image,text": 0}
    assert list(modality_counts([])) == [m.value for m in Modality]


def test_modality_counts_count_each_row_once():
    rows = [*CANDIDATES, *QUERIES]
    assert modality_counts(rows) == {"text": 2, "image": 2, "image,text": 2}


def test_reason_counts_put_the_most_frequent_reason_first():
    rows = [
        _bad(1, Reason.BAD_JSON),
        _bad(2, Reason.IMAGE_MISSING),
        _bad(3, Reason.IMAGE_MISSING),
        _bad(4, Reason.DUPLICATE_ID),
        _bad(5, Reason.IMAGE_MISSING),
        _bad(6, Reason.DUPLICATE_ID),
    ]
    counts = reason_counts(rows)
    assert counts == {"image_missing": 3, "duplicate_id": 2, "bad_json": 1}
    assert list(counts) == ["image_missing", "duplicate_id", "bad_json"]


def test_reason_counts_of_nothing_is_empty():
    assert reason_counts([]) == {}


def test_summarize_counts_rows_quarantine_rate_modalities_and_reasons():
    result = ReadResult(rows=CANDIDATES[:2], quarantined=[_bad(5, Reason.BAD_JSON)])
    assert summarize(result) == {
        "rows": 2,
        "quarantined": 1,
        "quarantine_rate": 0.333333,
        "by_modality": {"text": 1, "image": 1, "image,text": 0},
        "by_reason": {"bad_json": 1},
    }


def test_summarize_can_leave_modalities_out():
    qrels = [Qrel("1:10", "1:1", 1, 0)]
    summary = summarize(ReadResult(rows=qrels, quarantined=[]), with_modality=False)
    assert summary["by_modality"] == {}
    assert (summary["rows"], summary["quarantined"], summary["quarantine_rate"]) == (1, 0, 0.0)


def test_summarize_of_an_empty_result_has_a_zero_rate():
    summary = summarize(ReadResult(rows=[], quarantined=[]))
    assert summary["rows"] == summary["quarantined"] == 0
    assert summary["quarantine_rate"] == 0.0
    assert summary["by_reason"] == {}
