"""Running the graph from Python: stage order, and failures reported with their cause."""

from __future__ import annotations

import dagster as dg
import pytest

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.defs.assets.corpus import candidate_pool, demo_corpus, queries
from rar_pipeline.defs.launch import STAGES, StepFailed, materialize_step
from rar_pipeline.defs.partitions import register_corpus_partitions
from rar_pipeline.defs.resources import CorpusResource


def test_a_failed_step_raises_with_the_assets_own_message(mini_corpus, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    register_corpus_partitions(instance, discover(mini_corpus))
    corpus = CorpusResource(data_root=str(mini_corpus), artifacts_dir=str(tmp_path / "out"))
    with pytest.raises(StepFailed, match=r"queries\[mbeir_mini_task0\] failed .*candidate_pool"):
        materialize_step(
            "queries",
            "mbeir_mini_task0",
            assets=[demo_corpus, candidate_pool, queries],
            resources={"corpus": corpus},
            instance=instance,
        )


def test_stages_run_upstream_first():
    order = [name for name, _ in STAGES]
    assert order.index("candidate_pool") < order.index("queries")
    assert order.index("queries") < order.index("offline_captioner")
    assert order.index("offline_captioner") < order.index("corpus_captions")
    assert order.index("corpus_captions") < order.index("enhanced_corpus")
