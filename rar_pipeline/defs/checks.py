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

from dataclasses import dataclass
from typing import Any

import dagster as dg


@dataclass(frozen=True)
class _Check:
    """One check: its name, what it verifies, and how hard a failure stops what follows."""

    name: str
    description: str
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
    blocking: bool = False

    def spec(self, asset: str) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(
            name=self.name, asset=asset, description=self.description, blocking=self.blocking
        )

    def result(self, passed: bool, metadata: dict[str, Any]) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            check_name=self.name, passed=passed, severity=self.severity, metadata=metadata
        )


_QUARANTINE_RATE = _Check(
    "quarantine_rate",
    "Share of rows quarantined stays at or below max_quarantine_rate "
    "(a WARN, never a failed run: the good rows go on).",
    severity=dg.AssetCheckSeverity.WARN,
)
_FAILURE_RATE = _Check(
    "failure_rate",
    "Share of VLM items that failed after retries stays at or below max_failure_rate "
    "(a WARN: failed items keep their own text and are retried next run).",
    severity=dg.AssetCheckSeverity.WARN,
)
_QUARANTINE_CEILING = _Check(
    "quarantine_ceiling",
    "At most block_quarantine_rate of the rows are quarantined; above it the "
    "partition's downstream does not run.",
    blocking=True,
)
_CAPTION_COVERAGE = _Check(
    "caption_coverage",
    "At least min_caption_coverage of the image and image+text candidates have a caption.",
    blocking=True,
)
_NO_TEST_LEAKAGE = _Check(
    "no_test_leakage",
    "No test label (a test query's text and image with one of its positives, as a pair or a "
    "hard negative), no test query, and no candidate only test queries label, is in the "
    "training pairs. The builder leaves such pairs out and lists them; this audit, "
    "independent of it, blocks what it let through.",
    blocking=True,
)
_CURRENT_CHECKPOINT = _Check(
    "current_checkpoint",
    "The checkpoint this index embeds with was trained on the current training pairs, so "
    "the configs the evaluation compares were built from the same enhanced data; otherwise "
    "the evaluation does not run.",
    blocking=True,
)
_RECALL_FLOOR = _Check("recall_floor", "Every config's macro Recall@5 is at least the floor.")

QUARANTINE_RATE = _QUARANTINE_RATE.name
FAILURE_RATE = _FAILURE_RATE.name
QUARANTINE_CEILING = _QUARANTINE_CEILING.name
CAPTION_COVERAGE = _CAPTION_COVERAGE.name
NO_TEST_LEAKAGE = _NO_TEST_LEAKAGE.name
RECALL_FLOOR = _RECALL_FLOOR.name
CURRENT_CHECKPOINT = _CURRENT_CHECKPOINT.name
# checks whose failure stops what is downstream (`rar run` reads this)
BLOCKING = {
    c.name for c in (_QUARANTINE_CEILING, _CAPTION_COVERAGE, _NO_TEST_LEAKAGE, _CURRENT_CHECKPOINT)
}

# The spec each asset declares: (asset) -> dg.AssetCheckSpec
quarantine_rate_spec = _QUARANTINE_RATE.spec
failure_rate_spec = _FAILURE_RATE.spec
quarantine_ceiling_spec = _QUARANTINE_CEILING.spec
caption_coverage_spec = _CAPTION_COVERAGE.spec
no_test_leakage_spec = _NO_TEST_LEAKAGE.spec
recall_floor_spec = _RECALL_FLOOR.spec
current_checkpoint_spec = _CURRENT_CHECKPOINT.spec


def quarantine_rate_result(
    summary: dict[str, Any], max_rate: float, *, partition: str | None = None
) -> dg.AssetCheckResult:
    """Evaluate the quarantine-rate check from an ingest summary."""
    rate = float(summary["quarantine_rate"])
    return _QUARANTINE_RATE.result(rate <= max_rate, {
        "quarantine_rate": rate,
        "max_quarantine_rate": max_rate,
        "quarantined": int(summary["quarantined"]),
        "rows": int(summary["rows"]),
        "by_reason": summary["by_reason"],
        **({"partition": partition} if partition else {}),
    })  # fmt: skip


def failure_rate_result(failures: int, attempted: int, max_rate: float) -> dg.AssetCheckResult:
    """Evaluate the failure-rate check; `attempted` counts items that needed the VLM."""
    rate = failures / attempted if attempted else 0.0
    return _FAILURE_RATE.result(rate <= max_rate, {
        "failure_rate": round(rate, 6),
        "max_failure_rate": max_rate,
        "failures": failures,
        "vlm_items": attempted,
    })  # fmt: skip


def quarantine_ceiling_result(summary: dict[str, Any], ceiling: float) -> dg.AssetCheckResult:
    """Evaluate the ceiling from an ingest summary."""
    rate = float(summary["quarantine_rate"])
    return _QUARANTINE_CEILING.result(
        rate <= ceiling, {"quarantine_rate": rate, "block_quarantine_rate": ceiling}
    )


def caption_coverage_result(captioned: int, images: int, floor: float) -> dg.AssetCheckResult:
    """`captioned` of `images` image-bearing candidates got a caption."""
    coverage = captioned / images if images else 1.0
    return _CAPTION_COVERAGE.result(coverage >= floor, {
        "caption_coverage": round(coverage, 6),
        "min_caption_coverage": floor,
        "captioned": captioned,
        "image_items": images,
    })  # fmt: skip


def no_test_leakage_result(
    leaks: dict[str, list[str]], *, left_out: int | None = None
) -> dg.AssetCheckResult:
    """From `core.retrieval.pairs.pair_leaks`; `left_out`: what the builder already left out."""
    return _NO_TEST_LEAKAGE.result(not any(leaks.values()), {
        **{kind: len(ids) for kind, ids in leaks.items()},
        "examples": dg.MetadataValue.json({k: v[:5] for k, v in leaks.items() if v}),
        **({"left_out_by_the_builder": left_out} if left_out is not None else {}),
    })  # fmt: skip


def recall_floor_result(macro_r5: dict[str, float], floor: float) -> dg.AssetCheckResult:
    """`macro_r5`: config -> its macro Recall@5 over the tasks."""
    under = sorted(c for c, r in macro_r5.items() if r < floor)
    return _RECALL_FLOOR.result(not under, {
        "recall_floor": floor,
        "under_the_floor": ", ".join(under) or "none",
        **{f"{c} macro R@5": round(r, 4) for c, r in macro_r5.items()},
    })  # fmt: skip


def current_checkpoint_result(outdated: str | None, reference: str) -> dg.AssetCheckResult:
    """`outdated`: why the checkpoint is not the current one (`consistency`), or None."""
    return _CURRENT_CHECKPOINT.result(
        outdated is None, {"embedded_by": reference, "outdated": outdated or "no"}
    )
