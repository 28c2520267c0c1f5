"""What `rar validate` says about a corpus: counts per file and the quarantined rows.

`Validation` gathers the per-file `IngestReport`s once (instruction lines are shared by
every task, so they are counted once) and renders them as text or JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rar_pipeline.core.corpus.ingest import IngestReport
from rar_pipeline.core.corpus.mbeir import NO_TRAIN_SPLIT, CorpusLayout, qrels_missing_text
from rar_pipeline.core.corpus.records import QuarantinedRow


@dataclass
class Validation:
    """A corpus' validation: its layout and one report per pool shard and task."""

    layout: CorpusLayout
    reports: list[IngestReport]

    @property
    def bad_instructions(self) -> list[QuarantinedRow]:
        found = (r.extra.get("instructions_quarantined") for r in self.reports)
        return next((rows for rows in found if rows), [])

    @property
    def quarantined(self) -> list[QuarantinedRow]:
        return [q for r in self.reports for q in r.quarantined] + list(self.bad_instructions)

    @property
    def rows(self) -> int:
        return sum(r.summary["rows"] for r in self.reports)

    def as_json(self) -> str:
        return json.dumps(
            {
                "data_root": str(self.layout.root),
                "skipped": self.layout.skipped,
                "rows": self.rows,
                "quarantined": len(self.quarantined),
                "files": {r.key: r.summary for r in self.reports},
                "quarantine": [
                    {
                        "source": q.source,
                        "line": q.line,
                        "row_id": q.row_id,
                        "reason": q.reason.value,
                        "detail": q.detail,
                    }
                    for q in self.quarantined
                ],  # fmt: skip
            },
            indent=2,
        )

    def as_text(self, show: int = 20) -> str:
        """A table of files, then up to `show` quarantined rows."""
        layout, reports = self.layout, self.reports
        lines = [f"{layout.root}: {len(layout.pools)} pool shards, {len(layout.queries)} tasks"]
        lines += [f"  skipped {path}: {why}" for path, why in layout.skipped.items()]
        if not layout.train_tasks:
            lines.append("  warning: " + NO_TRAIN_SPLIT)
        lines += [
            "  warning: " + qrels_missing_text(r.key, r.extra["qrels_missing"])
            for r in reports
            if r.extra.get("qrels_missing")
        ]
        conflicts = sorted({d for r in reports for d in r.extra.get("conflicting_positives", [])})
        if conflicts:
            lines.append(f"  {len(conflicts)} positives have different content in different "
                         f"pools, e.g. {', '.join(conflicts[:3])}")  # fmt: skip
        lines.append(f"{'shard / task':<48} {'rows':>9} {'quarantined':>12}  reasons")
        for r in reports:
            reasons = ", ".join(f"{k}={v}" for k, v in r.summary["by_reason"].items())
            lines.append(f"{r.key:<48} {r.summary['rows']:>9} {r.summary['quarantined']:>12}  "
                         f"{reasons}")  # fmt: skip
        if self.bad_instructions:
            lines.append(f"{'instructions':<48} {'':>9} {len(self.bad_instructions):>12}")
        every = self.quarantined
        lines.append(f"{'total':<48} {self.rows:>9} {len(every):>12}")
        if every[:show]:
            lines.append("\nquarantined rows:")
            lines += [f"  {q.source}:{q.line} [{q.row_id or '-'}] {q.reason.value}: {q.detail}"
                      for q in every[:show]]  # fmt: skip
            if len(every) > show:
                lines.append(f"  ... and {len(every) - show} more (use --show N or --json)")
        return "\n".join(lines)
