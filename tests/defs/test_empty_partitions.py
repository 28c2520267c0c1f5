"""A shard or task with no valid row is an empty output with its metadata, never a failed run."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from rar_pipeline.core.enhance.merge import CORPUS_COLUMNS, QUERY_COLUMNS
from rar_pipeline.core.enhance.outputs import CAPTION_COLUMNS
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import CorpusResource
from tests.fake_vlm import FakeVLMResource
from tests.graph_resources import graph_assets, graph_resources


def _run(mini_corpus: Path, tmp_path: Path):
    """The whole graph on the corpus with a fake VLM."""
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"))
    vlm = FakeVLMResource()
    result = run_pipeline(
        load_settings(data_root=mini_corpus, artifacts_dir=tmp_path / "out"),
        resources=graph_resources(corpus, vlm),
        assets=graph_assets(vlm),
        instance=dg.DagsterInstance.ephemeral(),
    )
    return corpus, result


def test_empty_and_all_quarantined_files_run_to_completion(mini_corpus: Path, tmp_path: Path):
    pools, queries = mini_corpus / "cand_pool" / "local", mini_corpus / "query" / "test"
    (pools / "mbeir_empty_task1_cand_pool.jsonl").write_text("")
    (pools / "mbeir_allbad_task1_cand_pool.jsonl").write_text('{"did": \n[1, 2]\n')
    (queries / "mbeir_empty_task1_test.jsonl").write_text("\n")
    (queries / "mbeir_allbad_task1_test.jsonl").write_text("not json\n")
    corpus, result = _run(mini_corpus, tmp_path)
    done = {(s.asset, s.partition): s.metadata for s in result.steps}
    paths = corpus.artifacts()
    for shard in ("mbeir_empty_task1_cand_pool", "mbeir_allbad_task1_cand_pool"):
        assert done[("candidate_pool", shard)]["dagster/row_count"] == 0
        assert done[("enhanced_corpus", shard)]["dagster/row_count"] == 0
        assert list(pd.read_parquet(paths.captions(shard)).columns) == CAPTION_COLUMNS
        assert list(pd.read_parquet(paths.enhanced_corpus(shard)).columns) == CORPUS_COLUMNS
    assert done[("candidate_pool", "mbeir_allbad_task1_cand_pool")]["quarantined"] == 2
    for task in ("mbeir_empty_task1", "mbeir_allbad_task1"):
        assert done[("enhanced_queries", task)]["dagster/row_count"] == 0
        assert list(pd.read_parquet(paths.enhanced_queries(task)).columns) == QUERY_COLUMNS
    assert done[("queries", "mbeir_allbad_task1")]["quarantined"] == 1
    # the partitions after the empty ones were built too
    assert ("enhanced_queries", "mbeir_mini_task6") in done


def test_a_huge_valid_row_leaves_small_metadata(mini_corpus: Path, tmp_path: Path):
    """Item text is clipped wherever it is shown: a 20 MB row costs kilobytes of metadata."""
    import json

    huge = "word " * 4_000_000  # 20 MB of valid text
    pool = mini_corpus / "cand_pool" / "local" / "mbeir_mini_task6_cand_pool.jsonl"
    row = {"did": "77:9999", "txt": huge, "img_path": None, "modality": "text"}
    pool.write_text(pool.read_text() + json.dumps(row) + "\n")
    corpus, result = _run(mini_corpus, tmp_path)
    # the evaluation's chart is an image whose size does not depend on any item's text
    sizes = {
        (s.asset, s.partition): len(str({k: v for k, v in s.metadata.items() if k != "chart"}))
        for s in result.steps
    }
    assert max(sizes.values()) < 20_000, max(sizes.items(), key=lambda kv: kv[1])
    merged = pd.read_parquet(corpus.artifacts().enhanced_corpus("mbeir_mini_task6_cand_pool"))
    assert (merged["enhanced_txt"] == huge).any()  # the data itself is kept whole
