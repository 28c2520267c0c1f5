"""Asset checks: bad rows and failed items never fail a run, but too many of them warn."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from rar_pipeline.core.retrieval.pairs import LEAK_KINDS
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.assets.enhancement import build_enhancement_assets
from rar_pipeline.defs.checks import (
    BLOCKING,
    CAPTION_COVERAGE,
    FAILURE_RATE,
    QUARANTINE_CEILING,
    QUARANTINE_RATE,
    caption_coverage_result,
    caption_coverage_spec,
    current_checkpoint_result,
    current_checkpoint_spec,
    failure_rate_result,
    failure_rate_spec,
    no_test_leakage_result,
    no_test_leakage_spec,
    quarantine_ceiling_result,
    quarantine_rate_result,
    quarantine_rate_spec,
    recall_floor_result,
)
from rar_pipeline.defs.resources import VLMResource


def _summary(quarantined: int, rows: int, by_reason: dict[str, int] | None = None) -> dict:
    return {
        "quarantine_rate": quarantined / rows if rows else 0.0,
        "quarantined": quarantined,
        "rows": rows,
        "by_reason": by_reason if by_reason is not None else {"bad_json": quarantined},
    }


def _values(result: dg.AssetCheckResult) -> dict:
    return {k: v.value for k, v in result.metadata.items()}


# ---------------------------------------------------------------------------
# quarantine_rate


@pytest.mark.parametrize(("quarantined", "rows"), [(0, 10), (1, 10)])
def test_a_quarantine_rate_at_or_below_the_threshold_passes(quarantined, rows):
    result = quarantine_rate_result(_summary(quarantined, rows), max_rate=0.1)
    assert result.passed is True
    assert result.check_name == QUARANTINE_RATE


def test_a_quarantine_rate_above_the_threshold_warns_without_failing_the_run():
    result = quarantine_rate_result(_summary(2, 10), max_rate=0.1)
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.WARN


def test_the_quarantine_check_is_a_warning_even_when_it_passes():
    assert quarantine_rate_result(_summary(0, 10), 0.1).severity == dg.AssetCheckSeverity.WARN


def test_a_file_with_no_rows_passes_the_quarantine_check():
    result = quarantine_rate_result(_summary(0, 0, {}), max_rate=0.0)
    assert result.passed is True
    assert _values(result)["rows"] == 0


def test_a_zero_threshold_tolerates_no_quarantined_row():
    assert quarantine_rate_result(_summary(0, 5), 0.0).passed is True
    assert quarantine_rate_result(_summary(1, 5), 0.0).passed is False


def test_the_quarantine_check_reports_rate_threshold_counts_and_reasons():
    summary = _summary(3, 12, {"bad_json": 2, "image_missing": 1})
    result = quarantine_rate_result(summary, max_rate=0.1, partition="mbeir_mini_task0_cand_pool")
    assert _values(result) == {
        "quarantine_rate": 0.25,
        "max_quarantine_rate": 0.1,
        "quarantined": 3,
        "rows": 12,
        "by_reason": {"bad_json": 2, "image_missing": 1},
        "partition": "mbeir_mini_task0_cand_pool",
    }


def test_the_quarantine_check_names_no_partition_when_given_none():
    assert "partition" not in quarantine_rate_result(_summary(0, 1), 0.1).metadata


def test_numpy_counts_in_the_summary_become_plain_metadata_numbers():
    summary = {
        "quarantine_rate": np.float64(0.5),
        "quarantined": np.int64(1),
        "rows": np.int64(2),
        "by_reason": {},
    }
    values = _values(quarantine_rate_result(summary, 0.6))
    assert values["quarantine_rate"] == 0.5
    assert (values["quarantined"], values["rows"]) == (1, 2)
    assert type(values["quarantined"]) is int


def test_the_quarantine_spec_names_the_asset_it_checks():
    spec = quarantine_rate_spec("candidate_pool")
    assert spec.key == dg.AssetCheckKey(dg.AssetKey("candidate_pool"), QUARANTINE_RATE)
    assert "max_quarantine_rate" in spec.description


@pytest.mark.parametrize("asset", [candidate_pool, queries])
def test_both_corpus_assets_carry_their_own_quarantine_checks(asset):
    assert asset.check_keys == {
        dg.AssetCheckKey(asset.key, QUARANTINE_RATE),
        dg.AssetCheckKey(asset.key, QUARANTINE_CEILING),
    }


# ---------------------------------------------------------------------------
# failure_rate


@pytest.mark.parametrize(("failures", "attempted"), [(0, 20), (1, 20)])
def test_a_failure_rate_at_or_below_the_threshold_passes(failures, attempted):
    result = failure_rate_result(failures, attempted, max_rate=0.05)
    assert result.passed is True
    assert result.check_name == FAILURE_RATE


def test_a_failure_rate_above_the_threshold_warns_without_failing_the_run():
    result = failure_rate_result(2, 20, max_rate=0.05)
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.WARN


def test_a_run_that_needed_no_vlm_item_passes_with_a_zero_rate():
    result = failure_rate_result(0, 0, max_rate=0.0)
    assert result.passed is True
    assert _values(result)["failure_rate"] == 0.0


def test_the_failure_check_reports_rate_threshold_and_counts():
    result = failure_rate_result(1, 3, max_rate=0.5)
    assert _values(result) == {
        "failure_rate": 0.333333,
        "max_failure_rate": 0.5,
        "failures": 1,
        "vlm_items": 3,
    }


def test_the_failure_spec_names_the_asset_it_checks():
    spec = failure_rate_spec("enhanced_queries")
    assert spec.key == dg.AssetCheckKey(dg.AssetKey("enhanced_queries"), FAILURE_RATE)
    assert "max_failure_rate" in spec.description


def test_both_vlm_assets_carry_their_own_failure_check():
    checked = {
        asset.key.to_user_string(): asset.check_keys
        for asset in build_enhancement_assets(VLMResource())
        if asset.check_keys
    }
    assert checked == {
        "corpus_captions": {
            dg.AssetCheckKey(dg.AssetKey("corpus_captions"), FAILURE_RATE),
            dg.AssetCheckKey(dg.AssetKey("corpus_captions"), CAPTION_COVERAGE),
        },
        "enhanced_queries": {dg.AssetCheckKey(dg.AssetKey("enhanced_queries"), FAILURE_RATE)},
    }


# ---------------------------------------------------------------------------
# blocking checks: they fail with ERROR severity and stop what is downstream


def test_blocking_checks_are_declared_blocking():
    assert caption_coverage_spec("corpus_captions").blocking
    assert current_checkpoint_spec("lancedb_index_full").blocking
    assert BLOCKING == {
        "quarantine_ceiling", "caption_coverage", "no_test_leakage", "current_checkpoint"
    }  # fmt: skip


def test_an_index_whose_checkpoint_is_outdated_blocks_the_evaluation():
    assert current_checkpoint_result(None, "full@abc").passed
    blocked = current_checkpoint_result("retriever_checkpoint_full was trained on ...", "full@abc")
    assert not blocked.passed and blocked.severity == dg.AssetCheckSeverity.ERROR
    assert _values(blocked)["outdated"].startswith("retriever_checkpoint_full was trained")


def test_a_mostly_quarantined_file_is_blocked_above_the_ceiling():
    assert quarantine_ceiling_result(_summary(8, 10), 0.9).passed
    blocked = quarantine_ceiling_result(_summary(19, 20), 0.9)
    assert not blocked.passed and blocked.severity == dg.AssetCheckSeverity.ERROR


@pytest.mark.parametrize(("captioned", "images", "passed"),
                         [(5, 10, True), (4, 10, False), (0, 0, True)])  # fmt: skip
def test_caption_coverage_blocks_a_shard_left_mostly_uncaptioned(captioned, images, passed):
    result = caption_coverage_result(captioned, images, 0.5)
    assert result.passed is passed and result.severity == dg.AssetCheckSeverity.ERROR


def test_leakage_fails_on_any_leak_and_shows_examples():
    clean = {"test_split_pairs": [], "test_only_positives": []}
    assert no_test_leakage_result(clean).passed
    leaked = no_test_leakage_result({"test_split_pairs": [], "test_only_positives": ["d1"]})
    assert not leaked.passed
    assert _values(leaked)["test_only_positives"] == 1


def test_leakage_blocks_only_what_the_builder_let_through_and_counts_what_it_left_out():
    nothing = {kind: [] for kind in LEAK_KINDS}
    # the builder left out 3 label-revealing pairs and negatives; none slipped through
    passed = no_test_leakage_result(nothing, left_out=3)
    assert passed.passed and _values(passed)["left_out_by_the_builder"] == 3
    slipped = no_test_leakage_result({**nothing, "test_label_positives": ["train/q5 c3"]},
                                     left_out=3)  # fmt: skip
    assert not slipped.passed and slipped.severity == dg.AssetCheckSeverity.ERROR
    assert _values(slipped)["test_label_positives"] == 1
    assert _values(slipped)["examples"] == {"test_label_positives": ["train/q5 c3"]}
    spec = no_test_leakage_spec("training_pairs_none")
    assert spec.blocking and "test label" in spec.description


def test_the_recall_floor_names_the_configs_under_it():
    result = recall_floor_result({"none": 0.8, "full": 0.01}, 0.05)
    assert not result.passed and _values(result)["under_the_floor"] == "full"
    assert recall_floor_result({"none": 0.8}, 0.05).passed
