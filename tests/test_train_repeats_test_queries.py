"""`rar run` on corpora whose train split repeats test queries word for word.

Real corpora repeat short queries across splits with other targets (COCO's captions recur
across images): such a train query trains, on every pair but one that would reveal a test
label (a test query's words with one of its positives), which is left out and listed. A
train split that is a copy of the test split therefore trains on nothing: the run finishes
and evaluates the untrained base encoder (zero-shot), and takes away the checkpoints an
earlier run trained on other data rather than serving them for this data.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from rar_pipeline.cli import main
from tests.projects import point_at_project

MINI = Path(__file__).parent / "fixtures" / "mbeir_mini"
CONFIGS = ("none", "corpus", "query", "full")
TRAIN = Path("query/train/mbeir_mini_task0_train.jsonl")
TEST = Path("query/test/mbeir_mini_task0_test.jsonl")
# test query 77:2000 says "a red circle" with positive 77:1; this train query (its task id
# given, as real M-BEIR rows give it) says the same with another positive (the union train
# pool's text candidate)
REPEAT = {"qid": "77:1002", "query_txt": "a red circle", "query_img_path": None,
          "query_modality": "text", "query_src_content": None, "pos_cand_list": ["77:14"],
          "neg_cand_list": [], "task_id": 0}  # fmt: skip


@dataclass(frozen=True)
class Run:
    """A project after `rar run` on one corpus, and what the command printed."""

    project: Path
    code: int
    output: str

    @property
    def artifacts(self) -> Path:
        return self.project / "artifacts" / "mbeir_mini"

    def report(self) -> dict:
        return json.loads((self.artifacts / "evaluation" / "report.json").read_text())

    def left_out(self, config: str) -> list[dict]:
        path = self.artifacts / "training_pairs" / f"{config}.left_out.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def _rar_run(project: Path, edit) -> Run:
    """`rar run` (two epochs) on a copy of the mini corpus that `edit` changed."""
    data = project / "data" / "mbeir_mini"
    shutil.copytree(MINI, data)
    edit(data)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out):
        point_at_project(patch, project)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        code = main(["run", "--data", str(data), "--epochs", "2"])
    return Run(project, code, out.getvalue())


def _add_repeat(data: Path) -> None:
    with (data / TRAIN).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(REPEAT) + "\n")


@pytest.fixture(scope="module")
def repeats_with_other_positives(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The mini corpus with a train query that says what a test query says, run once."""
    return _rar_run(tmp_path_factory.mktemp("repeats"), _add_repeat)


@pytest.mark.slow
def test_train_queries_with_a_test_querys_words_and_other_positives_train_every_config(
    repeats_with_other_positives: Run,
):
    run = repeats_with_other_positives
    assert run.code == 0, run.output
    assert "blocking check failed" not in run.output
    for config in CONFIGS:
        assert f"rar-mbeir_mini-{config} v1" in run.output  # trained and registered
        assert (run.artifacts / "checkpoints" / config / "checkpoint.json").is_file()
        pairs = pd.read_parquet(run.artifacts / "training_pairs" / f"{config}.parquet")
        assert ("77:1002", "77:14") in set(zip(pairs.qid, pairs.did, strict=True))
        assert run.left_out(config) == []
    report = run.report()
    assert report["rows"]
    for config in CONFIGS:
        assert not report["info"][f"retriever.{config}"].endswith("@untrained")


def _copy_test_to_train(data: Path) -> None:
    shutil.copyfile(data / TEST, data / TRAIN)


@pytest.mark.slow
def test_a_train_split_copying_the_test_split_is_left_out_listed_and_evaluated_zero_shot(
    repeats_with_other_positives: Run, tmp_path: Path
):
    # the artifacts folder still holds the checkpoints an earlier run trained on other data
    earlier = repeats_with_other_positives
    shutil.copytree(earlier.artifacts, tmp_path / "artifacts" / "mbeir_mini")
    assert (tmp_path / "artifacts" / "mbeir_mini" / "checkpoints" / "none").is_dir()
    run = _rar_run(tmp_path, _copy_test_to_train)
    assert run.code == 0, run.output
    assert "blocking check failed" not in run.output
    assert run.output.count("skipped: no train pairs: ") == 4
    assert "would reveal a test label" in run.output
    for config in CONFIGS:
        left_out = run.left_out(config)
        listed = {(r["query_key"], r["did"], r["test_qid"]) for r in left_out}
        assert {("train/77:2000", "77:1", "77:2000"), ("train/77:2001", "77:2", "77:2001")} <= (
            listed
        )
        assert all(r["role"] == "positive" and "test query" in r["reason"] for r in left_out)
        assert pd.read_parquet(run.artifacts / "training_pairs" / f"{config}.parquet").empty
        assert not (run.artifacts / "checkpoints" / config).exists()  # not served for this data
    report = run.report()
    assert report["rows"]
    assert {report["info"][f"retriever.{c}"] for c in CONFIGS} == {f"{c}@untrained"
                                                                   for c in CONFIGS}  # fmt: skip
