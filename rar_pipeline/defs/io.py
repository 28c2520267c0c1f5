"""What every asset body does around its core function: read inputs, show progress, hash.

Inputs are read from the paths `core.layout.ArtifactLayout` gives; a missing input is a
`dg.Failure` that names the asset to materialize first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from tqdm.auto import tqdm

from rar_pipeline.core.corpus.tables import frame_to_records
from rar_pipeline.core.files import values_hash


def read_input(path: Path, what: str) -> pd.DataFrame:
    """An upstream asset's table; `what` names it (e.g. ``candidate_pool[shard]``)."""
    if not path.is_file():
        raise dg.Failure(f"{path} does not exist: materialize {what} first")
    return pd.read_parquet(path)


def read_records(path: Path, record_type: type, what: str) -> list[Any]:
    """An upstream table as records (`Candidate`, `Query`)."""
    return frame_to_records(read_input(path, what), record_type)


@contextmanager
def progress_bar(desc: str, total: int, unit: str = " items") -> Iterator[Any]:
    """A bar on a terminal, nothing in captured logs; yields its `update`."""
    with tqdm(total=total, desc=desc, unit=unit, disable=None, mininterval=1.0, leave=False) as bar:
        yield bar.update


def data_version(frame: pd.DataFrame, column: str) -> dg.DataVersion:
    """A hash of what downstream consumes: unchanged outputs leave descendants fresh."""
    return dg.DataVersion(values_hash(frame[column].tolist()))


def samples_table(rows: list[tuple[str, Any, Any]]) -> dg.MetadataValue:
    """A markdown table of (id, before, after) samples."""

    def cell(value: Any) -> str:
        text = str(value if value is not None else "")
        return text.replace("|", "/").replace("\n", " ⏎ ")[:200]

    lines = ["| id | before | after |", "|---|---|---|"]
    lines += [f"| {i} | {cell(before)} | {cell(after)} |" for i, before, after in rows]
    return dg.MetadataValue.md("\n".join(lines))
