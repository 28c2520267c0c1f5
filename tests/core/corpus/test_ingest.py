"""Ingest steps: one pool shard or one query task in, Parquet tables and quarantine files out."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.ingest import (
    MissingUpstreamError,
    file_digest,
    ingest_pool,
    ingest_queries,
    known_candidate_ids,
    validate_corpus,
)
from rar_pipeline.core.corpus.mbeir import CorpusLayout, discover
from rar_pipeline.core.corpus.readers import KnownCandidates
from rar_pipeline.core.corpus.records import Query, Reason
from rar_pipeline.core.corpus.tables import frame_to_records
from rar_pipeline.core.layout import ArtifactLayout

GLOBAL = "mbeir_union_train_cand_pool"
POOL0 = "mbeir_mini_task0_cand_pool"
POOL6 = "mbeir_mini_task6_cand_pool"
TASK0 = "mbeir_mini_task0"
TASK6 = "mbeir_mini_task6"

# every id that survives validation of the three fixture pools
VALID_DIDS = {"77:100", "77:101", "77:1", "77:2", "77:3", "77:14", "77:20", "77:21", "77:22"}
# the bad lines of cand_pool/local/mbeir_mini_task0_cand_pool.jsonl (see test_mbeir.py)
POOL0_BAD_LINES = list(range(4, 18))


@pytest.fixture
def corpus(mini_corpus: Path) -> CorpusLayout:
    return discover(mini_corpus)


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactLayout:
    return ArtifactLayout(tmp_path / "artifacts")


def _ingest_all_pools(corpus: CorpusLayout, artifacts: ArtifactLayout) -> KnownCandidates:
    for shard in corpus.pools:
        ingest_pool(corpus, shard, artifacts)
    return known_candidate_ids(artifacts, corpus.pools)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------
# ingest_pool


def test_a_pool_shard_is_written_exactly_at_the_layout_paths(corpus, artifacts):
    report = ingest_pool(corpus, POOL0, artifacts)
    assert report.output == artifacts.pool(POOL0)
    assert report.quarantine_file == artifacts.quarantine("candidate_pool", POOL0)
    assert _files_under(artifacts.root) == {report.output, report.quarantine_file}


def test_the_pool_parquet_holds_only_the_valid_rows_in_file_order(corpus, artifacts):
    report = ingest_pool(corpus, POOL0, artifacts)
    frame = pd.read_parquet(report.output)
    assert list(frame["did"]) == ["77:1", "77:2", "77:3", "77:14"]
    assert list(frame["modality"]) == ["image", "image", "image,text", "text"]
    assert report.ids == ["77:1", "77:2", "77:3", "77:14"]


def test_the_pool_summary_counts_rows_quarantine_and_modalities(corpus, artifacts):
    summary = ingest_pool(corpus, POOL0, artifacts).summary
    assert summary["rows"] == 4
    assert summary["quarantined"] == 14
    assert summary["quarantine_rate"] == round(14 / 18, 6)
    assert summary["by_modality"] == {"text": 1, "image": 2, "image,text": 1}
    assert summary["by_reason"]["modality_mismatch"] == 2
    assert summary["by_reason"]["path_escapes_root"] == 2
    assert sum(summary["by_reason"].values()) == 14


def test_pool_quarantine_lines_carry_source_line_and_reason(corpus, artifacts):
    report = ingest_pool(corpus, POOL0, artifacts)
    records = _jsonl(report.quarantine_file)
    assert [r["line"] for r in records] == POOL0_BAD_LINES
    assert {r["source"] for r in records} == {"cand_pool/local/mbeir_mini_task0_cand_pool.jsonl"}
    assert all(r["reason"] in {reason.value for reason in Reason} for r in records)
    assert all(set(r) == {"source", "line", "row_id", "reason", "detail", "raw"} for r in records)
    by_line = {r["line"]: r for r in records}
    assert by_line[4]["reason"] == "bad_json"
    duplicate = by_line[15]
    assert (duplicate["row_id"], duplicate["reason"]) == ("77:2", "duplicate_id")
    assert "line 2" in duplicate["detail"]
    assert json.loads(duplicate["raw"])["did"] == "77:2"


def test_a_clean_shard_still_gets_an_empty_quarantine_file(corpus, artifacts):
    report = ingest_pool(corpus, POOL6, artifacts)
    assert report.summary["quarantined"] == 0
    assert report.quarantine_file.read_text() == ""
    assert len(pd.read_parquet(report.output)) == 3


def test_the_pool_report_names_its_source_relative_to_the_data_root(corpus, artifacts):
    report = ingest_pool(corpus, GLOBAL, artifacts)
    assert report.key == GLOBAL
    assert report.sources == ["cand_pool/global/mbeir_union_train_cand_pool.jsonl"]
    assert report.data_version == file_digest([corpus.pools[GLOBAL]])
    assert list(report.preview["did"]) == ["77:100", "77:101"]


def test_the_image_check_level_reaches_the_pool_reader(corpus, artifacts):
    report = ingest_pool(
        corpus, POOL0, artifacts, image_check=ImageCheck(level=ImageCheckLevel.EXISTS)
    )
    # unreadable, truncated and oversized images only fail a header or decode check
    assert {"77:9", "77:10", "77:11"} <= set(report.ids)
    assert "image_missing" in report.summary["by_reason"]


def test_an_unknown_pool_shard_is_a_key_error(corpus, artifacts):
    with pytest.raises(KeyError, match="no pool shard"):
        ingest_pool(corpus, "mbeir_nope_cand_pool", artifacts)
    assert not artifacts.root.exists()


def test_a_pool_validated_without_artifacts_writes_nothing(corpus, tmp_path):
    before = _files_under(tmp_path)
    report = ingest_pool(corpus, POOL0, None)
    assert report.output is None and report.quarantine_file is None
    assert report.summary["rows"] == 4 and len(report.quarantined) == 14
    assert _files_under(tmp_path) == before


# ---------------------------------------------------------------------------
# known_candidate_ids


def test_known_candidate_ids_are_the_valid_ids_of_every_shard(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    assert known.valid == VALID_DIDS
    # the quarantined ones are known too, with why: a query pointing at one says so
    assert known.quarantined["77:13"].startswith("path_escapes_root at cand_pool/local/")
    assert "77:13 was quarantined (path_escapes_root" in known.why_missing("77:13")
    assert known.why_missing("77:99999") == "77:99999 is not in any pool"


def test_known_candidate_ids_cover_only_the_shards_asked_for(corpus, artifacts):
    _ingest_all_pools(corpus, artifacts)
    assert known_candidate_ids(artifacts, [POOL6]).valid == {"77:20", "77:21", "77:22"}


def test_known_candidate_ids_name_every_shard_not_yet_materialized(corpus, artifacts):
    ingest_pool(corpus, POOL6, artifacts)
    with pytest.raises(MissingUpstreamError) as caught:
        known_candidate_ids(artifacts, [GLOBAL, POOL0, POOL6])
    message = str(caught.value)
    assert GLOBAL in message and POOL0 in message
    assert POOL6 not in message
    assert isinstance(caught.value, RuntimeError)


# ---------------------------------------------------------------------------
# ingest_queries


def test_a_query_task_writes_queries_qrels_and_quarantine_at_the_layout_paths(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, TASK6, artifacts, known_dids=known)
    assert report.output == artifacts.queries(TASK6)
    assert report.quarantine_file == artifacts.quarantine("queries", TASK6)
    assert artifacts.qrels(TASK6).is_file()
    written = (
        _files_under(artifacts.root)
        - {artifacts.pool(s) for s in corpus.pools}
        - {artifacts.quarantine("candidate_pool", s) for s in corpus.pools}
    )
    assert written == {
        artifacts.queries(TASK6),
        artifacts.qrels(TASK6),
        artifacts.quarantine("queries", TASK6),
        artifacts.dropped_refs(TASK6),
        artifacts.quarantine("instructions", "instructions"),
    }


def test_queries_of_every_split_land_in_one_table(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, TASK0, artifacts, known_dids=known)
    frame = pd.read_parquet(report.output)
    assert list(frame["qid"]) == ["77:2000", "77:2001", "77:1000", "77:1001"]
    assert list(frame["split"]) == ["test", "test", "train", "train"]
    assert report.ids == list(frame["qid"])


def test_the_queries_table_reads_back_as_query_records(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, TASK0, artifacts, known_dids=known)
    first, second, _, last = frame_to_records(pd.read_parquet(report.output), Query)
    assert first.pos_cand_list == ("77:1",) and first.task_id == 0
    assert second.pos_cand_list == ("77:2",)  # a {"did": ...} entry became its id
    assert last.neg_cand_list == ("77:101",) and last.task_id is None
    assert last.img_path is None


def test_the_qrels_table_keeps_only_valid_pairs(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, TASK0, artifacts, known_dids=known)
    qrels = pd.read_parquet(artifacts.qrels(TASK0))
    assert list(zip(qrels["qid"], qrels["did"], strict=True)) == [
        ("77:2000", "77:1"),
        ("77:2001", "77:2"),
    ]
    assert report.extra["qrels_rows"] == 2


def test_the_query_report_counts_each_split_and_the_qrels(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, TASK0, artifacts, known_dids=known)
    splits = report.extra["splits"]
    assert (splits["test"]["rows"], splits["test"]["quarantined"]) == (2, 7)
    assert (splits["train"]["rows"], splits["train"]["quarantined"]) == (2, 0)
    qrels = report.extra["qrels"]["test"]
    assert (qrels["rows"], qrels["quarantined"], qrels["by_modality"]) == (2, 6, {})
    # the task total adds bad query rows and bad qrels lines
    assert report.summary["rows"] == 4
    assert report.summary["quarantined"] == 13
    assert report.summary["by_reason"]["unknown_reference"] == 5


def test_query_quarantine_lines_carry_source_line_and_reason(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, TASK0, artifacts, known_dids=known)
    records = _jsonl(report.quarantine_file)
    located = [(r["source"], r["line"], r["reason"]) for r in records]
    assert located[:7] == [
        ("query/test/mbeir_mini_task0_test.jsonl", 3, "missing_field"),
        ("query/test/mbeir_mini_task0_test.jsonl", 4, "unknown_reference"),
        ("query/test/mbeir_mini_task0_test.jsonl", 5, "wrong_type"),
        ("query/test/mbeir_mini_task0_test.jsonl", 6, "modality_mismatch"),
        ("query/test/mbeir_mini_task0_test.jsonl", 7, "duplicate_id"),
        ("query/test/mbeir_mini_task0_test.jsonl", 8, "unknown_reference"),
        ("query/test/mbeir_mini_task0_test.jsonl", 9, "wrong_type"),
    ]
    assert located[7:] == [
        ("qrels/test/mbeir_mini_task0_test_qrels.txt", line, reason)
        for line, reason in [
            (3, "duplicate_id"),
            (4, "bad_qrel_line"),
            (5, "bad_qrel_line"),
            (6, "unknown_reference"),
            (7, "unknown_reference"),
            (8, "unknown_reference"),
        ]
    ]


def test_instructions_matching_the_task_modalities_are_reported(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    task0 = ingest_queries(corpus, TASK0, artifacts, known_dids=known)
    task6 = ingest_queries(corpus, TASK6, artifacts, known_dids=known)
    assert task0.extra["instructions"] == [
        ["Find the photo described.", "Retrieve a matching image."]
    ]
    assert task6.extra["instructions"] == [["Answer the question about this image with a passage."]]


def test_bad_instruction_lines_get_their_own_quarantine_file(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, TASK6, artifacts, known_dids=known)
    assert [q.line for q in report.extra["instructions_quarantined"]] == [4]
    records = _jsonl(artifacts.quarantine("instructions", "instructions"))
    assert [(r["source"], r["line"], r["reason"]) for r in records] == [
        ("instructions/query_instructions.tsv", 4, "bad_instruction_line")
    ]
    # not counted again against the task
    assert "bad_instruction_line" not in report.summary["by_reason"]
    assert all(r["reason"] != "bad_instruction_line" for r in _jsonl(report.quarantine_file))


def test_a_corpus_without_instructions_reports_none(mini_corpus, artifacts):
    (mini_corpus / "instructions" / "query_instructions.tsv").unlink()
    corpus = discover(mini_corpus)
    report = ingest_queries(corpus, TASK6, artifacts, known_dids=None)
    assert report.extra["instructions"] == []
    assert report.extra["instructions_quarantined"] == []
    assert not artifacts.quarantine("instructions", "instructions").exists()


def test_without_known_ids_query_references_are_not_checked(corpus, artifacts):
    report = ingest_queries(corpus, TASK0, artifacts, known_dids=None)
    assert report.ids == ["77:2000", "77:2001", "77:2003", "77:2006", "77:1000", "77:1001"]
    assert report.extra["qrels_rows"] == 4


def test_the_query_report_names_its_sources_relative_to_the_data_root(corpus, artifacts):
    report = ingest_queries(corpus, TASK0, artifacts, known_dids=None)
    assert report.key == TASK0
    assert report.sources == [
        "query/test/mbeir_mini_task0_test.jsonl",
        "query/train/mbeir_mini_task0_train.jsonl",
        "qrels/test/mbeir_mini_task0_test_qrels.txt",
        "instructions/query_instructions.tsv",  # its prompts are part of the task's output
    ]
    assert list(report.preview["qid"])[:2] == ["77:2000", "77:2001"]


def test_an_unknown_query_task_is_a_key_error(corpus, artifacts):
    with pytest.raises(KeyError, match="no query task"):
        ingest_queries(corpus, "mbeir_nope_task3", artifacts, known_dids=None)
    assert not artifacts.root.exists()


def test_queries_validated_without_artifacts_write_nothing(corpus, tmp_path):
    before = _files_under(tmp_path)
    report = ingest_queries(corpus, TASK0, None, known_dids=VALID_DIDS)
    assert report.output is None and report.quarantine_file is None
    assert report.summary["rows"] == 4 and report.summary["quarantined"] == 13
    assert report.extra["instructions_quarantined"]  # found, but not written
    assert _files_under(tmp_path) == before


# ---------------------------------------------------------------------------
# validate_corpus


def test_validate_corpus_reports_every_pool_then_every_task(corpus):
    reports = validate_corpus(corpus)
    assert [r.key for r in reports] == [GLOBAL, POOL0, POOL6, TASK0, TASK6]
    assert [(r.summary["rows"], r.summary["quarantined"]) for r in reports] == [
        (2, 0),
        (4, 14),
        (3, 0),
        (4, 13),
        (3, 2),
    ]


def test_validate_corpus_checks_queries_against_the_pools_it_validated(corpus, artifacts):
    reports = {r.key: r for r in validate_corpus(corpus)}
    known = _ingest_all_pools(corpus, artifacts)
    ingested = ingest_queries(corpus, TASK0, None, known_dids=known)
    assert reports[TASK0].ids == ingested.ids == ["77:2000", "77:2001", "77:1000", "77:1001"]
    assert reports[TASK0].summary == ingested.summary


def test_validate_corpus_can_be_limited_to_some_tasks(corpus):
    reports = validate_corpus(corpus, tasks=[TASK6])
    assert [r.key for r in reports] == [GLOBAL, POOL0, POOL6, TASK6]


def test_validate_corpus_passes_the_image_check_on(corpus):
    off = ImageCheck(level=ImageCheckLevel.OFF)
    pool0 = validate_corpus(corpus, tasks=[TASK6], image_check=off)[1]
    assert pool0.key == POOL0
    assert {"77:8", "77:9", "77:10", "77:11"} <= set(pool0.ids)


def test_validate_corpus_writes_nothing(corpus, tmp_path):
    before = _files_under(tmp_path)
    reports = validate_corpus(corpus)
    assert all(r.output is None and r.quarantine_file is None for r in reports)
    assert _files_under(tmp_path) == before


# ---------------------------------------------------------------------------
# file_digest


def test_file_digest_is_stable_for_unchanged_files(corpus):
    paths = [corpus.pools[POOL0], corpus.pools[POOL6]]
    assert file_digest(paths) == file_digest(list(paths))
    assert len(file_digest(paths)) == 16


def test_file_digest_changes_when_the_file_bytes_change(corpus):
    path = corpus.pools[POOL6]
    before = file_digest([path])
    path.write_bytes(path.read_bytes() + b"\n")
    assert file_digest([path]) != before


def test_file_digest_ignores_the_modification_time(corpus):
    path = corpus.pools[POOL6]
    before = file_digest([path])
    path.write_bytes(path.read_bytes())
    assert file_digest([path]) == before


def test_a_pool_data_version_follows_its_file_content(corpus, artifacts):
    first = ingest_pool(corpus, POOL6, artifacts).data_version
    assert ingest_pool(corpus, POOL6, artifacts).data_version == first
    path = corpus.pools[POOL6]
    extra = {"txt": "More text.", "img_path": None, "modality": "text", "did": "77:23"}
    path.write_text(path.read_text() + json.dumps(extra) + "\n")
    second = ingest_pool(corpus, POOL6, artifacts)
    assert second.data_version != first
    assert second.ids[-1] == "77:23"


def test_a_query_data_version_follows_its_qrels_too(corpus):
    first = ingest_queries(corpus, TASK6, None, known_dids=None).data_version
    qrels = corpus.qrels[TASK6]["test"]
    qrels.write_text(qrels.read_text().replace("77:22 1 6", "77:22 2 6"))
    assert ingest_queries(corpus, TASK6, None, known_dids=None).data_version != first


def test_a_qid_in_two_splits_is_kept_in_both_and_reported(mini_corpus: Path):
    from rar_pipeline.core.corpus.mbeir import query_file

    test_file = discover(mini_corpus).queries["mbeir_mini_task6"]["test"]
    first = test_file.read_text().splitlines()[0]
    query_file(mini_corpus, "mbeir_mini_task6", "train").parent.mkdir(parents=True, exist_ok=True)
    query_file(mini_corpus, "mbeir_mini_task6", "train").write_text(first + "\n")
    layout = discover(mini_corpus)
    known = {d for shard in layout.pools for d in ingest_pool(layout, shard, None).ids}
    report = ingest_queries(layout, "mbeir_mini_task6", None, known_dids=known)
    qid = report.extra["qids_in_several_splits"]
    assert len(qid) == 1 and report.ids.count(qid[0]) == 2


def test_a_query_whose_positive_was_quarantined_says_so(corpus, artifacts):
    known = _ingest_all_pools(corpus, artifacts)
    report = ingest_queries(corpus, "mbeir_mini_task0", None, known_dids=known)
    details = {
        q.row_id: q.detail
        for q in report.quarantined
        if q.reason is Reason.UNKNOWN_REFERENCE and q.source.startswith("query/")
    }
    assert details["77:2006"] == (
        "positive 77:9 was quarantined "
        "(image_unreadable at cand_pool/local/mbeir_mini_task0_cand_pool.jsonl:12)"
    )
    assert details["77:2003"] == "positive 77:999 is not in any pool"


def test_a_positive_defined_differently_by_two_pools_is_reported(mini_corpus: Path):
    layout = discover(mini_corpus)
    pool6 = layout.pools["mbeir_mini_task6_cand_pool"]
    rows = [json.loads(line) for line in pool6.read_text().splitlines() if line.strip()]
    changed = {**rows[0], "txt": (rows[0]["txt"] or "") + " (a different passage)"}
    other = pool6.with_name("mbeir_other_task6_cand_pool.jsonl")
    other.write_text(json.dumps(changed) + "\n" + json.dumps(rows[1]) + "\n")
    layout = discover(mini_corpus)
    paths = ArtifactLayout(mini_corpus.parent / "out")
    for shard in layout.pools:
        ingest_pool(layout, shard, paths)
    known = known_candidate_ids(paths, layout.pools)
    assert known.conflicts == {
        rows[0]["did"]: ["mbeir_mini_task6_cand_pool", "mbeir_other_task6_cand_pool"]
    }  # the same content in two pools (rows[1]) is fine
    report = ingest_queries(layout, "mbeir_mini_task6", None, known_dids=known)
    assert report.extra["conflicting_positives"] == ["77:20"]  # query 77:3000's positive
    # rar validate sees it the same way
    (task,) = [r for r in validate_corpus(layout) if r.key == "mbeir_mini_task6"]
    assert task.extra["conflicting_positives"] == report.extra["conflicting_positives"]


def test_editing_the_instructions_changes_the_tasks_data_version(corpus, artifacts):
    before = ingest_queries(corpus, TASK0, artifacts, known_dids=None).data_version
    assert corpus.instructions is not None
    corpus.instructions.write_text(corpus.instructions.read_text() + "\n")
    assert ingest_queries(corpus, TASK0, artifacts, known_dids=None).data_version != before


def test_a_fixed_instruction_line_leaves_no_stale_quarantine(corpus, artifacts):
    ingest_queries(corpus, TASK0, artifacts, known_dids=None)
    quarantine = artifacts.quarantine("instructions", "instructions")
    assert quarantine.read_text()  # the fixture has a bad instruction line
    assert corpus.instructions is not None
    good = [line for line in corpus.instructions.read_text().splitlines() if line.count("\t") >= 4]
    corpus.instructions.write_text("\n".join(good) + "\n")
    ingest_queries(corpus, TASK0, artifacts, known_dids=None)
    assert quarantine.read_text() == ""


def test_validating_no_task_validates_no_task(corpus):
    reports = validate_corpus(corpus, tasks=[])
    assert {r.key for r in reports} == set(corpus.pools)
