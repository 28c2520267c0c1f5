"""Asset checks. Quarantine rate: bad rows never fail a run, but too many of them warn."""

from __future__ import annotations

from typing import Any

import dagster as dg

QUARANTINE_RATE = "quarantine_rate"


def quarantine_rate_spec(asset: str) -> dg.AssetCheckSpec:
    """The check that an asset's quarantine rate stays under the corpus' threshold."""
    return dg.AssetCheckSpec(
        name=QUARANTINE_RATE,
        asset=asset,
        description="Share of rows quarantined stays at or below max_quarantine_rate "
        "(a WARN, never a failed run: the good rows go on).",
    )


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
