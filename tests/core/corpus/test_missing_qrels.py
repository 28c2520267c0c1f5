"""A task evaluated without its qrels says so: a misnamed file is listed as not read, and
a split with no qrels file is warned about (its labels then come from pos_cand_list)."""

from __future__ import annotations

from pathlib import Path

from rar_pipeline.cli import main
from rar_pipeline.core.corpus.ingest import ingest_queries
from rar_pipeline.core.corpus.mbeir import discover

QRELS = Path("qrels/test/mbeir_mini_task6_test_qrels.txt")


def test_a_misnamed_qrels_file_is_listed_as_not_read(mini_corpus):
    misnamed = mini_corpus / "qrels/test/mbeir_mini_task6_test_qrel.txt"
    (mini_corpus / QRELS).rename(misnamed)
    layout = discover(mini_corpus)
    assert "test" not in layout.qrels.get("mbeir_mini_task6", {})
    assert (
        "not named like M-BEIR qrels" in layout.skipped["qrels/test/mbeir_mini_task6_test_qrel.txt"]
    )


def test_a_split_without_qrels_is_reported_and_one_with_them_is_not(mini_corpus):
    (mini_corpus / QRELS).unlink()
    layout = discover(mini_corpus)
    missing = ingest_queries(layout, "mbeir_mini_task6", None, known_dids=None)
    present = ingest_queries(layout, "mbeir_mini_task0", None, known_dids=None)
    assert missing.extra["qrels_missing"] == ["test"]
    assert present.extra["qrels_missing"] == []


def test_rar_validate_warns_of_the_missing_qrels(mini_corpus, capsys):
    (mini_corpus / QRELS).unlink()
    main(["validate", "--data", str(mini_corpus)])
    out = capsys.readouterr().out
    assert (
        "warning: mbeir_mini_task6: no qrels for its test split "
        "(qrels/test/mbeir_mini_task6_test_qrels.txt is missing or misnamed)"
    ) in out
    assert "mbeir_mini_task0: no qrels" not in out
