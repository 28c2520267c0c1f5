"""Asset checks: bad rows and failed items never fail a run, but too many of them warn.

- quarantine_rate (candidate_pool, queries): share of rows quarantined.
- failure_rate (corpus_captions, enhanced_queries): share of VLM items that failed.
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
