"""Real M-BEIR layouts, as UniIR's own reading code expects them (src/data/mbeir_dataset.py).

- training files name no task: query/train/mbeir_<dataset>_train.jsonl (rows carry task_id),
  and UniIR trains on query/union_train/mbeir_union_up_train.jsonl, validates on
  query/union_val/mbeir_union_val.jsonl;
- local pools hold positives only, so negatives often point at no pool;
- INFOSEEK queries list OVEN positives that UniIR drops at evaluation (it keeps the
  positives whose dataset id matches the query's);
- IR toolkits ship 4-column qrels (`qid 0 did relevance`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rar_pipeline.core.corpus.images import ImageCheck, ImageCheckLevel
from rar_pipeline.core.corpus.ingest import ingest_pool, ingest_queries, validate_corpus
from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.corpus.readers import KnownCandidates, read_qrels
from rar_pipeline.core.corpus.records import Reason

INFOSEEK, OVEN, CIRR = "8", "9", "7"


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _query(qid: str, txt: str, img: str | None, pos: list, neg: list, **extra) -> dict:
    modality = "image,text" if img else "text"
    return {
        "qid": qid,
        "query_txt": txt,
        "query_img_path": img,
        "query_modality": modality,
        "query_src_content": None,
        "pos_cand_list": pos,
        "neg_cand_list": neg,
        **extra,
    }


@pytest.fixture
def mbeir(tmp_path: Path) -> Path:
    root = tmp_path / "M-BEIR"
    img = root / "mbeir_images" / "x" / "photo.jpg"
    img.parent.mkdir(parents=True)
    Image.new("RGB", (16, 16), (10, 120, 200)).save(img)
    rel = "mbeir_images/x/photo.jpg"
    passage = {"img_path": None, "modality": "text", "src_content": None}
    _jsonl(
        root / "cand_pool" / "local" / "mbeir_infoseek_task6_cand_pool.jsonl",
        [{**passage, "did": f"{INFOSEEK}:1", "txt": "Lake Geneva is in Switzerland."},
         {**passage, "did": f"{INFOSEEK}:2", "txt": "Lake Como is in Italy."}],
    )  # fmt: skip
    _jsonl(
        root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl",
        [{"did": f"{CIRR}:5", "txt": None, "img_path": rel, "modality": "image"}],
    )
    _jsonl(
        root / "query" / "test" / "mbeir_infoseek_task6_test.jsonl",
        [
            # an OVEN positive beside the INFOSEEK one, and negatives in no pool
            _query(f"{INFOSEEK}:100", "what lake is this?", rel, [f"{INFOSEEK}:1", f"{OVEN}:77"],
                   [f"{INFOSEEK}:900", f"{INFOSEEK}:2"]),
            # only an OVEN positive: nothing to evaluate against
            _query(f"{INFOSEEK}:101", "which country is this in?", rel, [f"{OVEN}:78"], []),
        ],
    )  # fmt: skip
    qrels = root / "qrels" / "test" / "mbeir_infoseek_task6_test_qrels.txt"
    qrels.parent.mkdir(parents=True)
    qrels.write_text(f"{INFOSEEK}:100 0 {INFOSEEK}:1 1\n")  # an IR toolkit's 4 columns
    _jsonl(
        root / "query" / "train" / "mbeir_cirr_train.jsonl",
        [_query(f"{CIRR}:1", "same but red", rel, [f"{CIRR}:5"], [], task_id=7)],
    )
    _jsonl(
        root / "query" / "union_train" / "mbeir_union_up_train.jsonl",
        [_query(f"{CIRR}:2", "same but blue", rel, [f"{CIRR}:5"], [], task_id=7)],
    )
    _jsonl(
        root / "query" / "union_val" / "mbeir_union_val.jsonl",
        [_query(f"{CIRR}:3", "same but green", rel, [f"{CIRR}:5"], [], task_id=7)],
    )
    return root


def test_training_files_without_a_task_are_discovered_one_partition_each(mbeir: Path):
    layout = discover(mbeir)
    assert layout.queries["mbeir_cirr"] == {"train": mbeir / "query/train/mbeir_cirr_train.jsonl"}
    assert layout.queries["mbeir_union_up"]["train"].name == "mbeir_union_up_train.jsonl"
    assert layout.queries["mbeir_union"]["val"].name == "mbeir_union_val.jsonl"
    assert layout.queries["mbeir_infoseek_task6"]["test"].name == "mbeir_infoseek_task6_test.jsonl"
    assert layout.train_tasks == ["mbeir_cirr", "mbeir_union_up"]


def test_train_rows_keep_their_own_task_id(mbeir: Path):
    layout = discover(mbeir)
    known = KnownCandidates.of(ingest_pool(layout, "mbeir_union_train_cand_pool", None).ids)
    report = ingest_queries(layout, "mbeir_cirr", None, known_dids=known)
    assert report.summary["rows"] == 1 and report.preview["task_id"].tolist() == [7]
    assert report.preview["split"].tolist() == ["train"]


def test_a_training_file_without_a_task_gets_the_instructions_of_its_rows_tasks(mbeir: Path):
    tsv = mbeir / "instructions" / "query_instructions.tsv"
    tsv.parent.mkdir()
    tsv.write_text(
        "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n"
        f"image,text\timage\tCIRR\t{CIRR}\tFind a similar image with the change.\n"
        f"text\timage\tCIRR\t{CIRR}\tnot this task's modalities\n"
        f"image,text\ttext\tINFOSEEK\t{INFOSEEK}\tAnswer with a passage.\n"
    )
    layout = discover(mbeir)
    known = KnownCandidates.of(ingest_pool(layout, "mbeir_union_train_cand_pool", None).ids)
    report = ingest_queries(layout, "mbeir_cirr", None, known_dids=known)
    assert report.extra["instructions"] == [["Find a similar image with the change."]]
    union = ingest_queries(layout, "mbeir_union_up", None, known_dids=known)
    assert union.extra["instructions"] == [["Find a similar image with the change."]]


def _known(layout) -> KnownCandidates:
    ids = [i for shard in layout.pools for i in ingest_pool(layout, shard, None).ids]
    return KnownCandidates.of(ids)


def test_unknown_negatives_are_dropped_and_counted_and_the_query_kept(mbeir: Path):
    layout = discover(mbeir)
    report = ingest_queries(
        layout,
        "mbeir_infoseek_task6",
        None,
        known_dids=_known(layout),
        image_check=ImageCheck(level=ImageCheckLevel.DECODE),
    )
    kept = report.preview.set_index("qid")
    assert list(kept.loc[f"{INFOSEEK}:100", "neg_cand_list"]) == [f"{INFOSEEK}:2"]
    assert report.extra["dropped_refs"] == {"positive": 1, "negative": 1}


def test_a_positive_from_another_dataset_is_dropped_while_one_resolves(mbeir: Path):
    layout = discover(mbeir)
    report = ingest_queries(layout, "mbeir_infoseek_task6", None, known_dids=_known(layout))
    kept = report.preview.set_index("qid")
    assert list(kept.loc[f"{INFOSEEK}:100", "pos_cand_list"]) == [f"{INFOSEEK}:1"]
    (lost,) = report.quarantined
    assert lost.row_id == f"{INFOSEEK}:101" and lost.reason is Reason.UNKNOWN_REFERENCE
    assert lost.detail == f"positive {OVEN}:78 is not in any pool"


def test_dropped_references_are_written_beside_the_quarantine(mbeir: Path, tmp_path: Path):
    from rar_pipeline.core.layout import ArtifactLayout

    layout, paths = discover(mbeir), ArtifactLayout(tmp_path / "out")
    for shard in layout.pools:
        ingest_pool(layout, shard, paths)
    from rar_pipeline.core.corpus.ingest import known_candidate_ids

    ingest_queries(
        layout, "mbeir_infoseek_task6", paths, known_dids=known_candidate_ids(paths, layout.pools)
    )
    rows = [
        json.loads(x) for x in paths.dropped_refs("mbeir_infoseek_task6").read_text().splitlines()
    ]
    assert {(r["side"], r["did"]) for r in rows} == {
        ("positive", f"{OVEN}:77"),
        ("negative", f"{INFOSEEK}:900"),
    }
    assert all(r["qid"] == f"{INFOSEEK}:100" and "not in any pool" in r["why"] for r in rows)


def test_four_column_qrels_take_the_task_from_the_file_name(mbeir: Path):
    path = mbeir / "qrels" / "test" / "mbeir_infoseek_task6_test_qrels.txt"
    result = read_qrels(path, mbeir, task_id=6)
    assert [(q.qid, q.did, q.task_id) for q in result.rows] == [(f"{INFOSEEK}:100", "8:1", 6)]
    unnamed = read_qrels(path, mbeir)  # no task to take: say so
    assert unnamed.quarantined[0].reason is Reason.BAD_QREL_LINE
    layout = discover(mbeir)
    report = ingest_queries(layout, "mbeir_infoseek_task6", None, known_dids=_known(layout))
    assert report.extra["qrels_rows"] == 1


def test_a_data_root_without_a_train_split_says_so(mbeir: Path, capsys):
    import shutil

    from rar_pipeline.cli import main

    shutil.rmtree(mbeir / "query" / "train")
    shutil.rmtree(mbeir / "query" / "union_train")
    assert discover(mbeir).train_tasks == []
    assert main(["validate", "--data", str(mbeir)]) == 0
    assert "warning: no train split in this data root" in capsys.readouterr().out
    reports = validate_corpus(discover(mbeir))
    assert {r.key for r in reports} >= {"mbeir_union", "mbeir_infoseek_task6"}
