"""A corpus is a namespace (`defs.namespace`): two corpora run in one project, on one
Dagster instance, never share partitions, asset history or the latest evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from rar_pipeline.cli import main
from rar_pipeline.defs.namespace import in_namespace, namespace_of
from rar_pipeline.defs.partitions import CorpusPartitions
from tests.projects import point_at_project


def test_a_corpus_name_becomes_a_valid_dagster_name():
    assert namespace_of("M-BEIR") == "M_BEIR"
    assert namespace_of("demo") == "demo"
    assert CorpusPartitions.in_namespace("M_BEIR").pools.name == "M_BEIR__pool_shards"


def test_a_graph_put_in_a_namespace_reads_its_own_inputs():
    upstream = dg.AssetSpec("captions", partitions_def=CorpusPartitions.in_namespace("").pools)
    merged = dg.AssetSpec("merged", deps=["captions"], partitions_def=upstream.partitions_def)
    first = in_namespace([dg.AssetsDefinition(specs=[upstream])], "shop")
    # a later stage names the first one's final key: it stays as it is
    later = in_namespace(
        [dg.AssetsDefinition(specs=[merged.replace_attributes(deps=[first[0].key])])], "shop"
    )
    [spec] = later[0].specs
    assert spec.key == dg.AssetKey(["shop", "merged"])
    assert [d.asset_key for d in spec.deps] == [dg.AssetKey(["shop", "captions"])]
    assert spec.partitions_def.name == "shop__pool_shards"


def _snapshot(instance: dg.DagsterInstance, namespace: str) -> dict:
    """Everything the instance holds of one corpus: partitions, each asset's history."""
    partitions = CorpusPartitions.in_namespace(namespace)
    keys = [k for k in instance.get_asset_keys() if k.path[0] == namespace]
    return {
        "partitions": {d.name: sorted(instance.get_dynamic_partitions(d.name)) for d in partitions},
        "history": {
            k.to_user_string(): [
                r.storage_id for r in instance.fetch_materializations(k, limit=1000).records
            ]
            for k in keys
        },
    }


@pytest.mark.slow
def test_a_second_corpus_leaves_the_first_ones_partitions_history_and_evaluation(
    tmp_path: Path, mini_corpus: Path, monkeypatch: pytest.MonkeyPatch
):
    point_at_project(monkeypatch, tmp_path)
    monkeypatch.setenv("RAR_EPOCHS", "2")
    assert main(["run", "--data", str(mini_corpus)]) == 0
    instance = dg.DagsterInstance.get()
    first = _snapshot(instance, "mbeir_mini")
    assert len(first["partitions"]["mbeir_mini__pool_shards"]) == 3
    assert first["history"]["mbeir_mini/retrieval_eval"]

    other = tmp_path / "shop-2"  # another corpus, with one shard fewer
    shutil.copytree(mini_corpus, other)
    (other / "cand_pool" / "local" / "mbeir_mini_task0_cand_pool.jsonl").unlink()
    assert main(["run", "--data", str(other)]) == 0

    instance = dg.DagsterInstance.get()
    assert _snapshot(instance, "mbeir_mini") == first  # as it was
    second = _snapshot(instance, "shop_2")
    assert len(second["partitions"]["shop_2__pool_shards"]) == 2
    assert len(second["history"]["shop_2/retrieval_eval"]) == 1
    # every asset the instance knows is in one of the two namespaces
    assert {k.path[0] for k in instance.get_asset_keys()} == {"mbeir_mini", "shop_2"}
