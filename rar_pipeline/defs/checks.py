"""Asset checks: some warn, some block bad data from flowing on.

Warnings (a run goes on):
- quarantine_rate (candidate_pool, queries): share of rows quarantined.
- failure_rate (corpus_captions, enhanced_queries): share of VLM items that failed.

Blocking (severity ERROR: the partition's downstream does not run, in the run that found
it, in `rar run`, and under automation until the check passes):
- quarantine_ceiling (candidate_pool, queries): a shard or task mostly quarantined.
- caption_coverage (corpus_captions): image items left without a caption.
- no_test_leakage (training_pairs_*): anything of the test split in the training pairs (a
  test label the pair builder should have left out, a test query, a test-only candidate).

And recall_floor (retrieval_eval, ERROR): a config whose macro Recall@5 is under a floor
(an index embedded by the wrong model, a broken checkpoint).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

QUARANTINE_RATE = "quarantine_rate"
_QUARANTINE_RATE = (
    "Share of rows quarantined stays at or below max_quarantine_rate "
    "(a WARN, never a failed run: the good rows go on)."
)


def quarantine_rate_spec(asset: str) -> dg.AssetCheckSpec:
    """The check that an asset's quarantine rate stays under the corpus' threshold."""
    return dg.AssetCheckSpec(name=QUARANTINE_RATE, asset=asset, description=_QUARANTINE_RATE)


def quarantine_rate_result(
    summary: dict[str, Any], max_rate: float, *, partition: str | None = None
) -> dg.AssetCheckResult:
    """Evaluate the quarantine-rate check from an ingest summary."""
    rate = float(summary["quarantine_rate"])
    return dg.AssetCheckResult(
        check_name=QUARANTINE_RATE,
        passed=rate <= max_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "quarantine_rate": rate,
            "max_quarantine_rate": max_rate,
            "quarantined": int(summary["quarantined"]),
            "rows": int(summary["rows"]),
            "by_reason": summary["by_reason"],
            **({"partition": partition} if partition else {}),
        },
    )


FAILURE_RATE = "failure_rate"
_FAILURE_RATE = (
    "Share of VLM items that failed after retries stays at or below max_failure_rate "
    "(a WARN: failed items keep their own text and are retried next run)."
)


def failure_rate_spec(asset: str) -> dg.AssetCheckSpec:
    """The check that an enhancement asset's share of failed items stays under a threshold."""
    return dg.AssetCheckSpec(name=FAILURE_RATE, asset=asset, description=_FAILURE_RATE)


def failure_rate_result(failures: int, attempted: int, max_rate: float) -> dg.AssetCheckResult:
    """Evaluate the failure-rate check; `attempted` counts items that needed the VLM."""
    rate = failures / attempted if attempted else 0.0
    return dg.AssetCheckResult(
        check_name=FAILURE_RATE,
        passed=rate <= max_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failure_rate": round(rate, 6),
            "max_failure_rate": max_rate,
            "failures": failures,
            "vlm_items": attempted,
        },
    )


def _blocking(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name=name, asset=asset, description=description, blocking=True)


QUARANTINE_CEILING = "quarantine_ceiling"


def quarantine_ceiling_spec(asset: str) -> dg.AssetCheckSpec:
    """Blocks a shard or task whose quarantine rate is over the ceiling."""
    return _blocking(
        QUARANTINE_CEILING,
        asset,
        "At most block_quarantine_rate of the rows are quarantined; above it the "
        "partition's downstream does not run.",
    )


def quarantine_ceiling_result(summary: dict[str, Any], ceiling: float) -> dg.AssetCheckResult:
    """Evaluate the ceiling from an ingest summary."""
    rate = float(summary["quarantine_rate"])
    return dg.AssetCheckResult(
        check_name=QUARANTINE_CEILING,
        passed=rate <= ceiling,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"quarantine_rate": rate, "block_quarantine_rate": ceiling},
    )


CAPTION_COVERAGE = "caption_coverage"


def caption_coverage_spec(asset: str) -> dg.AssetCheckSpec:
    """Blocks a shard whose image items are too often left without a caption."""
    return _blocking(CAPTION_COVERAGE, asset, "At least min_caption_coverage of the image and "
                     "image+text candidates have a caption.")  # fmt: skip


def caption_coverage_result(captioned: int, images: int, floor: float) -> dg.AssetCheckResult:
    """`captioned` of `images` image-bearing candidates got a caption."""
    coverage = captioned / images if images else 1.0
    return dg.AssetCheckResult(
        check_name=CAPTION_COVERAGE,
        passed=coverage >= floor,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "caption_coverage": round(coverage, 6),
            "min_caption_coverage": floor,
            "captioned": captioned,
            "image_items": images,
        },  # fmt: skip
    )


NO_TEST_LEAKAGE = "no_test_leakage"


def no_test_leakage_spec(asset: str) -> dg.AssetCheckSpec:
    """Blocks training on pairs that hold anything of the test split."""
    return _blocking(NO_TEST_LEAKAGE, asset, "No test label (a test query's text and image "
                     "with one of its positives, as a pair or a hard negative), no test "
                     "query, and no candidate only test queries label, is in the training pairs. "
                     "The builder leaves such pairs out and lists them; this audit, independent "
                     "of it, blocks what it let through.")  # fmt: skip


def no_test_leakage_result(
    leaks: dict[str, list[str]], *, left_out: int | None = None
) -> dg.AssetCheckResult:
    """From `core.retrieval.pairs.pair_leaks`; `left_out`: what the builder already left out."""
    return dg.AssetCheckResult(
        check_name=NO_TEST_LEAKAGE,
        passed=not any(leaks.values()),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            **{kind: len(ids) for kind, ids in leaks.items()},
            "examples": dg.MetadataValue.json({k: v[:5] for k, v in leaks.items() if v}),
            **({"left_out_by_the_builder": left_out} if left_out is not None else {}),
        },
    )


RECALL_FLOOR = "recall_floor"


def recall_floor_spec(asset: str) -> dg.AssetCheckSpec:
    """Fails (ERROR) when a config's macro Recall@5 is under the floor."""
    return dg.AssetCheckSpec(name=RECALL_FLOOR, asset=asset, description="Every config's "
                             "macro Recall@5 is at least the floor.")  # fmt: skip


def recall_floor_result(macro_r5: dict[str, float], floor: float) -> dg.AssetCheckResult:
    """`macro_r5`: config -> its macro Recall@5 over the tasks."""
    under = sorted(c for c, r in macro_r5.items() if r < floor)
    return dg.AssetCheckResult(
        check_name=RECALL_FLOOR,
        passed=not under,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "recall_floor": floor,
            "under_the_floor": ", ".join(under) or "none",
            **{f"{c} macro R@5": round(r, 4) for c, r in macro_r5.items()},
        },  # fmt: skip
    )


# checks whose failure stops what is downstream (`rar run` reads this)
BLOCKING = {QUARANTINE_CEILING, CAPTION_COVERAGE, NO_TEST_LEAKAGE}
