"""Tabular forms of corpus records: Parquet outputs, quarantine files, summaries."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, fields
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd

from rar_pipeline.core.corpus.records import (
    DroppedRef,
    Modality,
    QuarantinedRow,
    ReadResult,
    Reason,
)
from rar_pipeline.core.files import write_atomic


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def records_to_frame(rows: Sequence[Any], record_type: type) -> pd.DataFrame:
    """Dataclass records -> DataFrame with one column per field (enums as their values)."""
    columns = [f.name for f in fields(record_type)]
    data = [{k: _plain(v) for k, v in asdict(r).items()} for r in rows]
    return pd.DataFrame(data, columns=columns)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_quarantine(rows: Sequence[QuarantinedRow], path: Path) -> Path:
    """One JSON object per quarantined row: source, line, row_id, reason, detail, raw."""
    lines = "".join(json.dumps({k: _plain(v) for k, v in asdict(r).items()}) + "\n" for r in rows)
    return write_atomic(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def write_dropped(refs: Sequence[DroppedRef], path: Path) -> Path:
    """One JSON object per reference a kept query lost: qid, side, did, why."""
    lines = "".join(json.dumps(asdict(ref)) + "\n" for ref in refs)
    return write_atomic(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def read_quarantine(path: Path) -> list[QuarantinedRow]:
    """The rows `write_quarantine` wrote (none if the file does not exist)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [QuarantinedRow(**{**r, "reason": Reason(r["reason"])}) for r in rows]


def modality_counts(rows: Sequence[Any]) -> dict[str, int]:
    """Rows per modality, every modality listed (0 where absent)."""
    counts = Counter(r.modality for r in rows)
    return {m.value: counts.get(m, 0) for m in Modality}


def reason_counts(rows: Sequence[QuarantinedRow]) -> dict[str, int]:
    """Quarantined rows per reason, most frequent first."""
    return dict(Counter(r.reason.value for r in rows).most_common())


def summarize(result: ReadResult, *, with_modality: bool = True) -> dict[str, Any]:
    """Counts that asset metadata and the CLI both show."""
    return {
        "rows": len(result.rows),
        "quarantined": len(result.quarantined),
        "quarantine_rate": round(result.quarantine_rate, 6),
        "by_modality": modality_counts(result.rows) if with_modality else {},
        "by_reason": reason_counts(result.quarantined),
    }


def frame_to_records(frame: pd.DataFrame, record_type: type) -> list[Any]:
    """The inverse of `records_to_frame` for `Candidate` and `Query` tables."""
    out = []
    for row in frame.to_dict(orient="records"):
        values = {}
        for f in fields(record_type):
            value = row.get(f.name)
            if f.name == "modality":
                value = Modality(value)
            elif f.name in ("pos_cand_list", "neg_cand_list"):
                value = tuple(value) if value is not None else ()
            elif isinstance(value, float) and value != value:  # NaN from a null column
                value = None
            elif f.name == "task_id" and value is not None:
                value = int(value)
            values[f.name] = value
        out.append(record_type(**values))
    return out
