"""The `refresh` job, the UI's one click after a prompt edit: it plans what `rar refresh`
would run over the partitions the instance knows, and submits it as one asset backfill."""

from __future__ import annotations

import dagster as dg
import pytest

from rar_pipeline.defs.refresh import build_refresh_job
from tests.defs.test_automation import (
    SHARDS,
    assets_of,
    edit_caption_prompt,
    graph,
    materialize_everything,
)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        materialize_everything(instance)
        yield instance


def launch(defs: dg.Definitions, instance, **config) -> list:
    """Launch the job as the Launchpad does; the backfills it submitted."""
    job = build_refresh_job(assets_of(defs))
    run_config = {"ops": {"plan_and_submit_refresh": {"config": config}}} if config else None
    assert job.execute_in_process(instance=instance, run_config=run_config).success
    return instance.get_backfills()


def targeted(backfill) -> set[tuple[str, str | None]]:
    subset = backfill.asset_backfill_data.target_subset
    partitions = subset.iterate_asset_partitions()
    return {(ap.asset_key.to_user_string(), ap.partition_key) for ap in partitions}


def test_after_a_prompt_edit_it_backfills_the_caption_lineage_with_training(instance, monkeypatch):
    defs = edit_caption_prompt(monkeypatch)
    [backfill] = launch(defs, instance, include_training=True)
    retrained = {f"{p}_{c}" for p in ("training_pairs", "retriever_checkpoint")
                 for c in ("corpus", "full")}  # fmt: skip
    assert targeted(backfill) == {
        *{(a, s) for a in ("corpus_captions", "enhanced_corpus") for s in SHARDS},
        *{(a, None) for a in retrained},
        *{(f"lancedb_index_{c}", None) for c in ("corpus", "full", "inference_only")},
        ("retrieval_eval", None),
    }
    assert backfill.title == f"refresh: {len(targeted(backfill))} asset partitions"
    assert "training left out" not in backfill.description


def test_without_training_it_says_which_checkpoints_it_leaves(instance, monkeypatch):
    defs = edit_caption_prompt(monkeypatch)
    [backfill] = launch(defs, instance)
    assert not {a for a, _ in targeted(backfill) if a.startswith("retriever_checkpoint_")}
    assert "training left out: retriever_checkpoint_corpus" in backfill.description


def test_when_everything_is_current_it_submits_nothing(instance):
    assert launch(graph(), instance) == []
