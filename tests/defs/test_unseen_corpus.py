"""`rar run` then `rar report` on corpora the project was not built around: the hand-written
mini corpus (bad rows of every kind), and the same without a train split (zero-shot: the
indexes and the evaluation use the untrained base encoder, and say so)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.cli import main
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.launch import run_pipeline
from rar_pipeline.defs.resources import CorpusResource
from tests.fake_vlm import FakeVLMResource
from tests.graph_resources import graph_assets, graph_resources
from tests.run_files import recall_from_files

CONFIGS = {"none", "corpus", "query", "full", "inference-only"}


def _run_and_report(data: Path, out: Path, capsys) -> list[dict]:
    corpus = CorpusResource(data_root=str(data), artifacts_dir=str(out))
    vlm = FakeVLMResource()
    run_pipeline(
        load_settings(data_root=data, artifacts_dir=out),
        resources=graph_resources(corpus, vlm),
        assets=graph_assets(vlm),
        instance=dg.DagsterInstance.ephemeral(),
    )
    capsys.readouterr()
    assert main(["report", "--data", str(data), "--artifacts", str(out), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check(rows: list[dict], out: Path, tasks: set[str]) -> None:
    assert {r["task"] for r in rows} == tasks
    for key in {(r["task"], r["query_type"]) for r in rows}:
        assert {r["config"] for r in rows if (r["task"], r["query_type"]) == key} == CONFIGS
    qrels = out / "evaluation" / "qrels"
    for r in rows:
        recall, _ = recall_from_files(r["run_file"], qrels / f"{r['task']}.qrels", None, 5)
        if r["query_type"] == "all" or len({x["query_type"] for x in rows
                                            if x["task"] == r["task"]}) == 1:  # fmt: skip
            assert r["recall_at_5"] == pytest.approx(recall)


@pytest.mark.slow
def test_a_corpus_it_has_never_seen(mini_corpus: Path, tmp_path: Path, capsys):
    rows = _run_and_report(mini_corpus, tmp_path / "out", capsys)
    _check(rows, tmp_path / "out", {"mbeir_mini_task0", "mbeir_mini_task6"})


@pytest.mark.slow
def test_a_corpus_without_a_train_split_is_evaluated_zero_shot(
    mini_corpus: Path, tmp_path: Path, capsys
):
    shutil.rmtree(mini_corpus / "query" / "train")
    out = tmp_path / "out"
    rows = _run_and_report(mini_corpus, out, capsys)
    _check(rows, out, {"mbeir_mini_task0", "mbeir_mini_task6"})
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert report["info"]["retriever.none"] == "none@untrained"
    assert not (out / "checkpoints" / "none").exists()
