"""Tabular forms of corpus records: Parquet outputs, quarantine files, summaries."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, fields
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


def iter_parquet_batches(
    path: Path, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """A Parquet table's rows in batches of at most `batch_rows`, one row group read at a time.

    `ParquetFile.iter_batches` was measured here (pyarrow 25) holding on to ~30 MB more per
    100k-row batch over a 5.6M-row table; reading row group by row group stays flat.
    """
    file = pq.ParquetFile(path)
    for group in range(file.metadata.num_row_groups):
        table = file.read_row_group(group, columns=columns)
        yield from table.to_batches(max_chunksize=batch_rows)
        del table


def write_parquet_chunks(frames: Iterable[pd.DataFrame], path: Path) -> Path:
    """Write frames one after another as one Parquet table, atomically, holding one at a time.

    The file reads back as `write_parquet(pd.concat(frames))` would have written it: the
    same columns, rows and Arrow types (a column that is null in every row stays Arrow
    `null`, as pandas writes it; one that is null only in the first frames is widened when
    a value comes, by copying what was written). Each frame becomes its own row group(s).
    `frames` is consumed inside the write: if it raises, no file (nor temp file) is left.
    """
    return write_atomic(path, lambda tmp: _write_chunks(frames, Path(tmp)))


def _write_chunks(frames: Iterable[pd.DataFrame], tmp: Path) -> None:
    writer: pq.ParquetWriter | None = None
    target = tmp
    first_empty: pd.DataFrame | None = None
    try:
        for frame in frames:
            if not len(frame):
                if first_empty is None:
                    first_empty = frame
                continue
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema)
            elif not table.schema.equals(writer.schema, check_metadata=False):
                schema = _widened(writer.schema, table.schema)
                if not schema.equals(writer.schema, check_metadata=False):
                    writer, target = _rewrite(writer, target, schema)
                table = table.cast(schema)
            writer.write_table(table)
        if writer is None:  # no row at all: what pandas writes for the empty table
            empty = first_empty if first_empty is not None else pd.DataFrame()
            empty.to_parquet(tmp, index=False)
            return
        writer.close()
        writer = None
        if target != tmp:
            os.replace(target, tmp)
    finally:
        if writer is not None:
            writer.close()
        if target != tmp and target.exists():
            target.unlink()


def _widened(old: pa.Schema, new: pa.Schema) -> pa.Schema:
    """`old`, with each column that is all-null there typed as `new` has it (if not null)."""
    fields_ = []
    for field in old:
        other = new.field(field.name)
        fields_.append(field.with_type(other.type) if _is_null(field.type) else field)
    return pa.schema(fields_, metadata=new.metadata if fields_ != list(old) else old.metadata)


def _is_null(kind: pa.DataType) -> bool:
    return pa.types.is_null(kind) or (pa.types.is_list(kind) and _is_null(kind.value_type))


def _rewrite(
    writer: pq.ParquetWriter, written: Path, schema: pa.Schema
) -> tuple[pq.ParquetWriter, Path]:
    """Copy what `writer` wrote into a new file of `schema`; the new writer and its file."""
    writer.close()
    target = written.with_name(written.name + ".widened")
    new = pq.ParquetWriter(target, schema)
    try:
        for batch in iter_parquet_batches(written, 100_000):
            new.write_table(pa.Table.from_batches([batch]).cast(schema))
    except BaseException:
        new.close()
        target.unlink(missing_ok=True)
        raise
    if written.name.endswith(".widened"):
        written.unlink()
    return new, target


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


def summarize_counts(
    rows: int, by_modality: Counter, quarantined: Sequence[QuarantinedRow]
) -> dict[str, Any]:
    """`summarize` from running counts (rows kept, their modalities) of a streamed read."""
    total = rows + len(quarantined)
    return {
        "rows": rows,
        "quarantined": len(quarantined),
        "quarantine_rate": round(len(quarantined) / total if total else 0.0, 6),
        "by_modality": {m.value: by_modality.get(m, 0) for m in Modality},
        "by_reason": reason_counts(quarantined),
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
