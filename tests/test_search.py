"""Search on a project after `rar demo`: the API, `rar search`, and the same ranking the
evaluation wrote for every test query."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from rar_pipeline.cli import main
from rar_pipeline.core.evaluation.evaluate import load_test_queries
from rar_pipeline.core.evaluation.report import read_report
from rar_pipeline.core.evaluation.trec import read_run
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.search.query import SearchQuery
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.searchers import Searchers
from tests.projects import point_at_project


@pytest.fixture(scope="module")
def searchers(demo_project) -> Searchers:
    return Searchers.from_settings(load_settings({"RAR_PROJECT_DIR": str(demo_project.root)}))


@pytest.fixture(scope="module")
def test_queries(demo_project):
    paths = ArtifactLayout(demo_project.artifacts)
    tasks = sorted(p.stem for p in paths.enhanced_queries("x").parent.glob("*.parquet"))
    return load_test_queries(paths, tasks)


def as_query(row, data_root) -> SearchQuery:
    image = data_root / row.img_path if isinstance(row.img_path, str) else None
    return SearchQuery(row.txt if isinstance(row.txt, str) else None, image)


@pytest.mark.parametrize("config", ["full", "none", "inference-only"])
def test_every_test_query_ranks_as_the_evaluation_ranked_it(
    demo_project, searchers, test_queries, config
):
    """One code path: searching a test query in its task's pool gives the run file's top 10."""
    paths = ArtifactLayout(demo_project.artifacts)
    pools = read_report(paths.evaluation_report)["info"]["pools"]["local"]
    searcher = searchers.get(config)
    for task, group in test_queries.groupby("task"):
        run = read_run(paths.run_file(config, task))
        queries = [as_query(row, demo_project.data) for row in group.itertuples()]
        results = searcher.search_many(queries, k=10, pool=pools[task])
        for row, result in zip(group.itertuples(), results, strict=True):
            expected = sorted(run[row.qid], key=lambda d: -run[row.qid][d])[:10]
            assert [h.did for h in result.hits] == expected, (task, row.qid)
            # the query was enhanced exactly as the pipeline enhanced it, from the cache
            if config != "none":
                assert result.searched_text == row.enhanced_txt
                assert result.enhancement in ("cached", "passthrough")
            assert result.vlm_calls == 0 and result.query_type == row.query_type


def test_models_load_once_per_retriever(searchers):
    searchers.get("none"), searchers.get("full")
    before = searchers.loads
    for config in ("none", "inference-only", "full", "none", "full"):
        searchers.get(config).search(SearchQuery("a red circle"))
    assert searchers.loads == before
    # inference-only is the none retriever over full's texts: the same model object
    assert searchers.get("inference-only").encoder is searchers.get("none").encoder


class TestRarSearch:
    def test_an_image_question_prints_its_rewrite_and_ranked_hits(
        self, demo_project, searchers, test_queries, monkeypatch, capsys
    ):
        point_at_project(monkeypatch, demo_project.root)
        row = test_queries[test_queries["query_type"] == "qa"].iloc[0]
        image = demo_project.data / row.img_path
        assert main(["search", row.txt, "--image", str(image), "-k", "5"]) == 0
        out = capsys.readouterr().out
        assert f"searched:  {row.enhanced_txt}" in out
        assert "type:      qa (enhancement: cached, no VLM call)" in out
        expected = searchers.get("full").search(SearchQuery(row.txt, image), 5)
        for hit in expected.hits:
            assert f"{hit.rank:>4}  {hit.did:<14}" in out

        assert main(["search", row.txt, "--image", str(image), "--format", "json",
                     "--hybrid", "--config", "query", "--modality", "text"]) == 0  # fmt: skip
        answer = json.loads(capsys.readouterr().out)
        assert answer["hybrid"] and answer["config"] == "query"
        assert answer["searched_text"] == row.enhanced_txt
        assert answer["hits"] and {h["modality"] for h in answer["hits"]} == {"text"}

    def test_mistakes_get_clear_errors(self, demo_project, tmp_path, monkeypatch, capsys):
        point_at_project(monkeypatch, demo_project.root)
        assert main(["search", "hat", "--config", "nope"]) == 2
        assert "unknown config 'nope'; choose one of none, corpus" in capsys.readouterr().err
        assert main(["search", "hat", "--image", str(tmp_path / "missing.png")]) == 2
        assert "image missing" in capsys.readouterr().err
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        assert main(["search", "hat", "--image", str(tmp_path / "bad.png")]) == 2
        assert "image unreadable" in capsys.readouterr().err
        assert main(["search"]) == 2
        assert "a query needs text, an image, or both" in capsys.readouterr().err

    def test_a_corpus_without_an_index_says_what_to_run(
        self, demo_project, tmp_path, monkeypatch, capsys
    ):
        point_at_project(monkeypatch, tmp_path)
        Image.new("RGB", (4, 4)).save(tmp_path / "q.png")
        assert main(["search", "hat", "--config", "none", "--data", str(demo_project.data),
                     "--artifacts", str(tmp_path / "empty")]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert "no index for config 'none' (make demo, or rar run --data DIR)" in err
        assert err.rstrip().endswith(": materialize lancedb_index_none")


class TestRarSearchRefusesWhatItCannotServe:
    def test_numbers_out_of_bounds_are_one_line_errors(self, demo_project, monkeypatch, capsys):
        point_at_project(monkeypatch, demo_project.root)
        # -k 4611686018427387904 was an OverflowError traceback from LanceDB
        for k in ("4611686018427387904", "0", "-3", "ten"):
            with pytest.raises(SystemExit) as exited:
                main(["search", "red", "-k", k])
            assert exited.value.code == 2
            assert "argument -k:" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["search", "red", "--epochs", "0"])
        assert "greater than or equal to 1" in capsys.readouterr().err
        monkeypatch.setenv("RAR_LR", "inf")
        assert main(["search", "red"]) == 2
        assert "RAR_LR: 'inf' is not a valid training.lr" in capsys.readouterr().err

    def test_hybrid_search_takes_quotes_and_operators(self, demo_project, monkeypatch, capsys):
        point_at_project(monkeypatch, demo_project.root)
        for text in ('"yellow rectangle"', "yellow AND (rectangle", "text:yellow*"):
            assert main(["search", text, "--hybrid", "-k", "3", "--format", "json"]) == 0
            assert len(json.loads(capsys.readouterr().out)["hits"]) == 3

    def test_a_damaged_index_or_checkpoint_names_the_asset_to_materialize(
        self, demo_project, tmp_path, monkeypatch, capsys
    ):
        root = tmp_path / "project"
        shutil.copytree(demo_project.root, root, ignore=shutil.ignore_patterns("dagster_home"))
        point_at_project(monkeypatch, root)
        artifacts = root / "artifacts" / "demo"
        for data in (artifacts / "lancedb" / "full.lance" / "data").iterdir():
            data.unlink()
        assert main(["search", "red"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rar: error: the full index cannot be read (RuntimeError")
        assert err.rstrip().endswith("materialize lancedb_index_full")
        assert "Dagster UI" not in err and len(err.strip().splitlines()) == 1
        (artifacts / "checkpoints" / "none" / "checkpoint.json").unlink()
        assert main(["search", "red", "--config", "none"]) == 2  # was served untrained
        assert "materialize retriever_checkpoint_none" in capsys.readouterr().err
        shutil.rmtree(artifacts / "checkpoints" / "none")  # gone: the index says it was trained
        assert main(["search", "red", "--config", "inference-only"]) == 2
        err = capsys.readouterr().err
        assert "embedded by none@" in err and "retriever_checkpoint_none" in err


def test_opening_a_config_loads_every_model_a_query_needs(demo_project):
    # the shipped backbones loaded on the first uncached query: seconds and ~300 MB
    from rar_pipeline.core.enhance import perception
    from rar_pipeline.core.retrieval.encoders import offline

    for lazy in (offline._minilm, perception._efficientnet, perception._ocr_engine):
        lazy.cache_clear()
    searchers = Searchers.from_settings(load_settings({"RAR_PROJECT_DIR": str(demo_project.root)}))
    searchers.open("full")
    for lazy in (offline._minilm, perception._efficientnet, perception._ocr_engine):
        assert lazy.cache_info().currsize == 1, lazy
