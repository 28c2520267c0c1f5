"""The artifacts layout: every path the project writes comes from one place."""

from __future__ import annotations

import re
from pathlib import Path

from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.layout import ArtifactLayout, ProjectLayout, demo_truth_file

PACKAGE = Path(__file__).resolve().parents[2] / "rar_pipeline"


def test_each_stage_writes_under_its_own_folder(tmp_path: Path):
    paths = ArtifactLayout(tmp_path)
    assert paths.pool("s") == tmp_path / "candidate_pool" / "s.parquet"
    assert paths.queries("t") == tmp_path / "queries" / "t.parquet"
    assert paths.quarantine("queries", "t") == tmp_path / "quarantine" / "queries" / "t.jsonl"
    assert paths.captions("s") == tmp_path / "corpus_captions" / "s.parquet"
    assert paths.enhanced_corpus("s") == tmp_path / "enhanced_corpus" / "s.parquet"
    assert paths.enhanced_queries("t") == tmp_path / "enhanced_queries" / "t.parquet"
    assert paths.caches == CacheRoot(str(tmp_path / "cache"))
    assert paths.perception_cache == paths.caches / "perception"
    runs = tmp_path / "evaluation" / "runs"
    assert paths.run_file("full", "t") == runs / "local" / "full" / "t.trec"
    assert paths.run_file("full", "t", "global") == runs / "global" / "full" / "t.trec"


def test_no_two_outputs_share_a_path(tmp_path: Path):
    paths = ArtifactLayout(tmp_path)
    every = [
        paths.pool("k"),
        paths.queries("k"),
        paths.qrels("k"),
        paths.captions("k"),
        paths.enhanced_corpus("k"),
        paths.enhanced_queries("k"),
        paths.training_pairs("k"),
        paths.checkpoint("k"),
        paths.captioner,
        paths.cache_dir,
        paths.lancedb,
        paths.run_file("k", "k"),
        paths.trec_qrels("k"),
    ]
    assert len(set(every)) == len(every)


def test_the_caches_go_to_a_database_when_a_cache_url_is_set(tmp_path: Path):
    url = "postgresql://rar@127.0.0.1:5432/cache"
    paths = ArtifactLayout(tmp_path, cache_url=url)
    assert paths.caches.shared and paths.caches.location == url
    assert (paths.perception_cache.location, paths.perception_cache.prefix) == (url, "perception")
    assert not ArtifactLayout(tmp_path).caches.shared


def test_project_defaults_and_the_demo_truth_sit_outside_the_data_root(tmp_path: Path):
    project = ProjectLayout(tmp_path)
    assert project.artifacts_for(tmp_path / "data" / "M-BEIR") == tmp_path / "artifacts" / "M-BEIR"
    truth = demo_truth_file(project.demo_data)
    assert not truth.is_relative_to(project.demo_data)
    assert truth == tmp_path / "data" / "demo_truth" / "products.jsonl"


def test_no_module_outside_the_layouts_joins_output_paths():
    """Output folders are named in core/layout.py only (and the M-BEIR contract in mbeir.py)."""
    folders = (
        "candidate_pool|corpus_captions|enhanced_corpus|enhanced_queries|quarantine|cache|"
        "perception|enhancements|offline_captioner|lancedb|mlruns|artifacts"
    )
    names = re.compile(rf'/\s*"({folders})"|"({folders})"\s*/')
    offenders = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "layout.py" and names.search(path.read_text())
    ]
    assert offenders == []
