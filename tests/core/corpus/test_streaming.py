"""Ingest streams a pool shard in chunks: the outputs are those of one chunk, whatever the size."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from rar_pipeline.core.corpus.ingest import ingest_pool, known_candidate_ids
from rar_pipeline.core.corpus.lines import SeenIds
from rar_pipeline.core.corpus.mbeir import CorpusLayout, discover, pool_file
from rar_pipeline.core.corpus.records import Reason
from rar_pipeline.core.corpus.tables import write_parquet, write_parquet_chunks
from rar_pipeline.core.files import TextColumnHasher, values_hash
from rar_pipeline.core.layout import ArtifactLayout

WHOLE = 10**6  # one chunk holds any test pool


def _outputs(layout: CorpusLayout, shard: str, out: Path, chunk_rows: int) -> dict:
    artifacts = ArtifactLayout(out)
    report = ingest_pool(layout, shard, artifacts, chunk_rows=chunk_rows)
    return {
        "frame": pd.read_parquet(report.output),
        "schema": pq.read_schema(report.output).remove_metadata(),
        "quarantine": report.quarantine_file.read_bytes(),
        "summary": report.summary,
        "ids": report.ids,
        "preview": report.preview.values.tolist(),
    }


def _pool(root: Path, lines: list[str]) -> CorpusLayout:
    path = pool_file(root, "mbeir_big_task1_cand_pool")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    query = root / "query" / "test" / "mbeir_big_task1_test.jsonl"
    query.parent.mkdir(parents=True, exist_ok=True)
    query.write_text("")
    return discover(root)


def _text(did: str, txt: str = "some words") -> str:
    return json.dumps({"did": did, "txt": txt, "img_path": None, "modality": "text"})


@pytest.mark.parametrize("chunk_rows", [1, 3, 7])
def test_every_fixture_pool_ingests_the_same_in_chunks_as_in_one(mini_corpus, tmp_path, chunk_rows):
    layout = discover(mini_corpus)
    for shard in layout.pools:
        whole = _outputs(layout, shard, tmp_path / "whole", WHOLE)
        chunked = _outputs(layout, shard, tmp_path / f"by{chunk_rows}", chunk_rows)
        pd.testing.assert_frame_equal(chunked.pop("frame"), whole.pop("frame"))
        assert chunked == whole, shard


def test_a_bad_row_in_a_later_chunk_is_quarantined_with_its_reason_and_counted(tmp_path):
    lines = [_text(f"1:{i}") for i in range(20)]
    lines[17] = lines[17][:-5]  # line 18, in the third chunk of 7
    layout = _pool(tmp_path / "data", lines)
    report = ingest_pool(layout, "mbeir_big_task1_cand_pool", ArtifactLayout(tmp_path / "out"),
                         chunk_rows=7)  # fmt: skip
    assert report.summary["rows"] == 19 and report.summary["quarantined"] == 1
    assert report.summary["by_reason"] == {"bad_json": 1}
    (bad,) = report.quarantined
    assert (bad.line, bad.reason) == (18, Reason.BAD_JSON)
    written = [json.loads(line) for line in report.quarantine_file.read_text().splitlines()]
    assert [(q["line"], q["reason"]) for q in written] == [(18, "bad_json")]
    assert len(pd.read_parquet(report.output)) == 19


def test_a_did_repeated_chunks_later_is_a_duplicate_of_its_first_line(tmp_path, monkeypatch):
    monkeypatch.setattr(SeenIds, "FREEZE", 4)  # older ids move into the compact arrays early
    lines = [_text(f"1:{i}") for i in range(30)]
    lines[15] = _text("1:1", "other words")  # line 16 repeats line 2's did
    lines[29] = _text("1:14")  # line 30 repeats line 15's
    layout = _pool(tmp_path / "data", lines)
    report = ingest_pool(layout, "mbeir_big_task1_cand_pool", ArtifactLayout(tmp_path / "out"),
                         chunk_rows=7)  # fmt: skip
    dups = [(q.line, q.row_id, q.detail) for q in report.quarantined]
    assert dups == [
        (16, "1:1", "id '1:1' already defined on line 2"),
        (30, "1:14", "id '1:14' already defined on line 15"),
    ]
    assert report.summary["by_reason"] == {"duplicate_id": 2}
    assert report.ids.count("1:1") == 1 and len(report.ids) == 28


def test_a_duplicate_within_one_chunk_is_caught_too(tmp_path):
    layout = _pool(tmp_path / "data", [_text("1:a"), _text("1:b"), _text("1:a")])
    report = ingest_pool(layout, "mbeir_big_task1_cand_pool", None, chunk_rows=7)
    assert [(q.line, q.reason) for q in report.quarantined] == [(3, Reason.DUPLICATE_ID)]
    assert report.ids == ["1:a", "1:b"]


def test_an_all_quarantined_shard_writes_an_empty_table(tmp_path):
    layout = _pool(tmp_path / "data", ["{not json"] * 9)
    report = ingest_pool(layout, "mbeir_big_task1_cand_pool", ArtifactLayout(tmp_path / "out"),
                         chunk_rows=4)  # fmt: skip
    frame = pd.read_parquet(report.output)
    assert frame.empty and list(frame.columns) == ["did", "modality", "txt", "img_path",
                                                   "src_content"]  # fmt: skip
    assert report.summary["quarantined"] == 9 and report.preview.empty


def test_known_candidate_ids_read_in_batches_match_one_read(mini_corpus, tmp_path):
    layout = discover(mini_corpus)
    artifacts = ArtifactLayout(tmp_path / "out")
    for shard in layout.pools:
        ingest_pool(layout, shard, artifacts, chunk_rows=2)
    assert known_candidate_ids(artifacts, layout.pools, batch_rows=1) == known_candidate_ids(
        artifacts, layout.pools
    )


# ---------------------------------------------------------------------------
# the chunked writer


def _frames():
    yield pd.DataFrame({"a": ["x", "y"], "b": [None, None], "c": [[], []]})
    yield pd.DataFrame({"a": ["z"], "b": ["now a string"], "c": [["flag"]]})
    yield pd.DataFrame({"a": pd.Series([], dtype=object), "b": [], "c": []})


def test_chunks_are_written_as_the_whole_frame_would_be(tmp_path):
    rows = [row for frame in _frames() for row in frame.values.tolist()]
    whole = write_parquet(pd.DataFrame(rows, columns=["a", "b", "c"]), tmp_path / "w.parquet")
    chunked = write_parquet_chunks(_frames(), tmp_path / "chunked.parquet")
    assert pq.read_schema(chunked).remove_metadata() == pq.read_schema(whole).remove_metadata()
    pd.testing.assert_frame_equal(pd.read_parquet(chunked), pd.read_parquet(whole))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.parquet", "w.parquet"]


def test_a_column_null_in_every_chunk_stays_null_typed(tmp_path):
    frames = [pd.DataFrame({"a": ["x"], "b": [None]}), pd.DataFrame({"a": ["y"], "b": [None]})]
    path = write_parquet_chunks(iter(frames), tmp_path / "t.parquet")
    assert str(pq.read_schema(path).field("b").type) == "null"


def test_a_write_that_fails_midway_leaves_no_file_and_the_old_output_intact(tmp_path):
    target = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"a": ["old"]}), target)

    def failing():
        yield pd.DataFrame({"a": ["x"], "b": [None]})
        yield pd.DataFrame({"a": ["y"], "b": ["widens: copies what was written"]})
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_parquet_chunks(failing(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]
    assert pd.read_parquet(target)["a"].tolist() == ["old"]


@pytest.mark.parametrize("values", [[None, None], ["a", None, "b"], ["a"], []])
def test_a_text_column_hash_streamed_equals_the_frame_columns_hash(values):
    frame = pd.DataFrame({"c": values}, columns=["c"])
    hasher = TextColumnHasher()
    for value in values:
        hasher.update([value])
    assert hasher.hexdigest() == values_hash(frame["c"].tolist())
