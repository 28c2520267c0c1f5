"""Corpus assets under `materialize`: partitions, metadata, quarantine files, checks."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.assets.demo import demo_corpus
from rar_pipeline.defs.partitions import CorpusPartitions, register_corpus_partitions
from rar_pipeline.defs.resources import CorpusResource

ASSETS = [demo_corpus, candidate_pool, queries]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def _corpus(data_root: Path, tmp_path: Path, **kw) -> CorpusResource:
    return CorpusResource(data_root=str(data_root), artifacts_dir=str(tmp_path / "out"), **kw)


def _run(asset: str, key: str | None, corpus: CorpusResource, instance, **kw):
    return dg.materialize(
        ASSETS,
        selection=[asset],
        partition_key=key,
        resources={"corpus": corpus},
        instance=instance,
        **kw,
    )


def _metadata(result, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def test_pool_partition_keeps_good_rows_and_quarantines_bad_ones(mini_corpus, tmp_path, instance):
    corpus = _corpus(mini_corpus, tmp_path)
    register_corpus_partitions(instance, discover(mini_corpus), CorpusPartitions.in_namespace(""))
    result = _run("candidate_pool", "mbeir_mini_task0_cand_pool", corpus, instance)
    assert result.success

    md = _metadata(result, "candidate_pool")
    assert md["dagster/row_count"] == 4
    assert (md["rows_text"], md["rows_image"], md["rows_image_text"]) == (1, 2, 1)
    assert md["quarantined"] == 14
    assert md["quarantined_by_reason"]["modality_mismatch"] == 2

    table = pd.read_parquet(tmp_path / "out/candidate_pool/mbeir_mini_task0_cand_pool.parquet")
    assert list(table["did"]) == ["77:1", "77:2", "77:3", "77:14"]
    quarantine = Path(md["quarantine_file"]).read_text().splitlines()
    rows = [json.loads(line) for line in quarantine]
    assert len(rows) == 14
    assert {"source", "line", "row_id", "reason", "detail", "raw"} <= set(rows[0])

    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks["quarantine_rate"]
    assert not check.passed  # 14 of 18 rows is far above the 5% default
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert checks["quarantine_ceiling"].passed  # blocking is opt-in (ceiling 1.0)


def test_quarantine_check_passes_on_a_clean_shard(mini_corpus, tmp_path, instance):
    corpus = _corpus(mini_corpus, tmp_path)
    register_corpus_partitions(instance, discover(mini_corpus), CorpusPartitions.in_namespace(""))
    result = _run("candidate_pool", "mbeir_mini_task6_cand_pool", corpus, instance)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks["quarantine_rate"]
    assert check.passed and check.metadata["quarantined"].value == 0


def test_queries_need_every_pool_first(mini_corpus, tmp_path, instance):
    corpus = _corpus(mini_corpus, tmp_path)
    register_corpus_partitions(instance, discover(mini_corpus), CorpusPartitions.in_namespace(""))
    result = _run("queries", "mbeir_mini_task0", corpus, instance, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0]
    assert "candidate_pool has not been materialized" in failure.step_failure_data.error.message


def test_query_task_partition_validates_all_splits_against_the_pools(
    mini_corpus, tmp_path, instance
):
    corpus = _corpus(mini_corpus, tmp_path)
    layout = discover(mini_corpus)
    register_corpus_partitions(instance, layout, CorpusPartitions.in_namespace(""))
    for shard in layout.pools:
        assert _run("candidate_pool", shard, corpus, instance).success
    result = _run("queries", "mbeir_mini_task0", corpus, instance)
    md = _metadata(result, "queries")
    assert md["rows_per_split"] == {"test": 2, "train": 2}
    assert md["dagster/row_count"] == 4
    assert md["quarantined"] == 13  # 7 query rows + 6 qrels lines
    assert md["qrels_rows"] == 2
    assert md["instructions"] == [["Find the photo described.", "Retrieve a matching image."]]
    assert md["instructions_quarantined"] == 1
    frame = pd.read_parquet(tmp_path / "out/queries/mbeir_mini_task0.parquet")
    assert set(frame["qid"]) == {"77:1000", "77:1001", "77:2000", "77:2001"}
    assert list(frame.loc[frame.qid == "77:1001", "pos_cand_list"].iloc[0]) == ["77:100"]
    qrels = pd.read_parquet(tmp_path / "out/qrels/mbeir_mini_task0.parquet")
    assert len(qrels) == 2


def test_demo_corpus_asset_builds_and_registers_partitions(tmp_path, instance):
    corpus = _corpus(tmp_path / "demo", tmp_path)
    config = {
        "n_train_products": 12,
        "n_test_products": 8,
        "train_queries_per_task": 4,
        "test_queries_per_task": 3,
    }
    result = dg.materialize(
        ASSETS,
        selection=["demo_corpus"],
        resources={"corpus": corpus},
        instance=instance,
        run_config={"ops": {"demo_corpus": {"config": config}}},
    )
    md = _metadata(result, "demo_corpus")
    assert md["products"] == 20 and md["rebuilt"] is True
    assert set(instance.get_dynamic_partitions("query_tasks")) == {
        f"mbeir_shapeshop_task{k}" for k in (0, 1, 2, 3, 6, 7)
    }
    assert "mbeir_union_train_cand_pool" in instance.get_dynamic_partitions("pool_shards")
    (event,) = result.asset_materializations_for_node("demo_corpus")
    assert event.tags["dagster/data_version"]  # the corpus fingerprint
