"""An ablation compares like with like: a config whose checkpoint or index was built from
other enhanced data than the definitions hold now is named, with what to materialize."""

from __future__ import annotations

import dataclasses

from rar_pipeline.core.evaluation.consistency import (
    ConfigInputs,
    checkpoint_outdated,
    inconsistencies,
)

FRESH = ConfigInputs(
    index="lancedb_index_full",
    checkpoint="retriever_checkpoint_full",
    reference="full@abc",
    checkpoint_built="v2",
    checkpoint_current="v2",
    embedded_by="full@abc",
    enhanced_built="e2",
    enhanced_current="e2",
)


def test_a_config_built_from_the_current_data_is_consistent():
    assert inconsistencies(FRESH) == [] and checkpoint_outdated(FRESH) is None


def test_a_checkpoint_trained_on_the_old_pairs_is_named_with_how_to_retrain():
    stale = dataclasses.replace(FRESH, checkpoint_built="v1")
    [why] = inconsistencies(stale)
    assert why.startswith("retriever_checkpoint_full was trained on training pairs of other")
    assert "code version v1, now v2" in why and "rar refresh --include-training" in why
    assert checkpoint_outdated(stale) == why


def test_a_never_trained_checkpoint_counts_only_when_a_checkpoint_exists():
    untrained = dataclasses.replace(
        FRESH, reference="full@untrained", embedded_by="full@untrained", checkpoint_built=None
    )
    assert inconsistencies(untrained) == []
    assert (
        "code version none" in inconsistencies(dataclasses.replace(FRESH, checkpoint_built=None))[0]
    )


def test_an_index_embedded_by_another_checkpoint_is_named():
    [why] = inconsistencies(dataclasses.replace(FRESH, embedded_by="full@old"))
    assert why == (
        "lancedb_index_full was embedded by full@old, the checkpoint is now full@abc: "
        "materialize lancedb_index_full"
    )


def test_an_index_of_the_old_enhanced_corpus_is_named_unless_the_config_reads_none():
    [why] = inconsistencies(dataclasses.replace(FRESH, enhanced_built="e1"))
    assert "holds the enhanced corpus of version e1, now e2" in why
    reads_none = dataclasses.replace(FRESH, enhanced_built="e1", enhanced_current=None)
    assert inconsistencies(reads_none) == []
