"""Files a real or hostile corpus produces: BOMs, bad bytes, odd paths, FIFOs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.corpus.readers import (
    read_candidates,
    read_instructions,
    read_qrels,
)
from rar_pipeline.core.corpus.records import Reason

OFF = ImageCheck(level=ImageCheckLevel.OFF)


def _row(did: str, txt: str = "a passage") -> bytes:
    return (json.dumps({"did": did, "txt": txt, "modality": "text"}) + "\n").encode()


def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path: Path):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(b"\xef\xbb\xbf" + _row("1:1") + _row("1:2"))
    result = read_candidates(pool, tmp_path)
    assert [c.did for c in result.rows] == ["1:1", "1:2"] and not result.quarantined


def test_a_byte_order_mark_in_the_instructions_is_harmless(tmp_path: Path):
    tsv = tmp_path / "query_instructions.tsv"
    header = "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\r\n"
    tsv.write_bytes(b"\xef\xbb\xbf" + (header + "text\timage\tx\t1\tFind it.\r\n").encode())
    result = read_instructions(tsv, tmp_path)
    assert [i.prompts for i in result.rows] == [("Find it.",)]


def test_invalid_utf8_is_quarantined_not_replaced(tmp_path: Path):
    """Replacing bad bytes could make two different ids collide into a false duplicate."""
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(
        _row("1:\xff").replace(b"\\u00ff", b"\xff")
        + _row("1:\xfe").replace(b"\\u00fe", b"\xfe")
        + _row("1:3")
    )
    result = read_candidates(pool, tmp_path)
    assert [c.did for c in result.rows] == ["1:3"]
    assert [q.reason for q in result.quarantined] == [Reason.BAD_ENCODING] * 2
    assert "not valid UTF-8" in result.quarantined[0].detail
    assert Reason.DUPLICATE_ID not in {q.reason for q in result.quarantined}


def test_invalid_utf8_in_qrels_is_quarantined(tmp_path: Path):
    qrels = tmp_path / "qrels.txt"
    qrels.write_bytes(b"9:1 0 9:2 1 0\n9:\xff 0 9:2 1 0\n")
    result = read_qrels(qrels, tmp_path)
    assert len(result.rows) == 1 and result.quarantined[0].reason is Reason.BAD_ENCODING


def test_a_folder_named_like_a_data_file_is_skipped_and_reported(mini_corpus: Path):
    (mini_corpus / "cand_pool" / "local" / "mbeir_odd_task0_cand_pool.jsonl").mkdir()
    layout = discover(mini_corpus)
    assert "mbeir_odd_task0_cand_pool" not in layout.pools
    assert layout.skipped == {
        "cand_pool/local/mbeir_odd_task0_cand_pool.jsonl": "not a regular file"
    }


def test_validate_shows_what_it_skipped(mini_corpus: Path, capsys):
    from rar_pipeline.cli import main

    (mini_corpus / "query" / "test" / "mbeir_odd_task1_test.jsonl").mkdir()
    assert main(["validate", "--data", str(mini_corpus)]) == 0
    assert "skipped query/test/mbeir_odd_task1_test.jsonl: not a regular file" in (
        capsys.readouterr().out
    )


def test_control_characters_in_an_image_path_are_quarantined_even_unchecked(tmp_path: Path):
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"did": "1:1", "img_path": "img/a\u0000.png", "modality": "image"},
        {"did": "1:2", "img_path": "img/b\n.png", "modality": "image"},
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_candidates(pool, tmp_path, image_check=OFF)
    assert not result.rows
    assert [q.reason for q in result.quarantined] == [Reason.BAD_PATH, Reason.BAD_PATH]


def test_a_fifo_named_like_an_image_fails_its_item_instead_of_hanging(tmp_path: Path):
    """With --image-check off the reader cannot see it; enhancement must not block on it."""
    from rar_pipeline.core.corpus.records import Candidate, Modality
    from rar_pipeline.core.enhance.cache import EnhancementCache
    from rar_pipeline.core.enhance.engine import plan_candidate, run_enhancement
    from tests.fake_vlm import FakeVLM

    (tmp_path / "img").mkdir()
    os.mkfifo(tmp_path / "img" / "fifo.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "ok.png")
    cands = [
        Candidate("1:1", Modality.IMAGE, None, "img/fifo.png"),
        Candidate("1:2", Modality.IMAGE, None, "img/ok.png"),
    ]
    items = [plan_candidate(c, tmp_path) for c in cands]
    outputs, stats = run_enhancement(items, FakeVLM(), EnhancementCache(tmp_path / "cache"))
    assert outputs["1:1"].status == "failed" and "not a regular file" in outputs["1:1"].error
    assert outputs["1:2"].status == "generated" and stats.failures == 1
