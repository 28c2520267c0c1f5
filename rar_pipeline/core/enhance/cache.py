"""Durable key-value stores on Parquet: the enhancement cache and the perception cache.

A store is a folder of immutable part files. Writes are buffered and flushed to a new part
(atomically: temp file, then rename) every `flush_every` entries or `flush_seconds`, so a run
killed mid-partition loses at most one buffer and the next run resumes from the cache.
Several processes may write one store at once (each writes its own parts); on read, the
newest entry of a key wins.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from rar_pipeline.core.enhance.prompts import PromptSpec
from rar_pipeline.core.enhance.vlm.base import SamplingParams
from rar_pipeline.core.files import write_atomic


class ParquetStore:
    """A durable map from string keys to rows of named columns.

    Nothing is loaded up front: `prefetch` reads just the wanted keys from every part (a
    columnar, filtered read), so a run over one partition costs memory for that partition,
    not for everything ever cached. `get` of a key not prefetched looks it up on its own.
    """

    def __init__(
        self, directory: Path, *, flush_every: int = 1024, flush_seconds: float = 30.0
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._rows: dict[str, dict[str, Any]] = {}  # looked up or written by this process
        self._absent: set[str] = set()  # looked up, not on disk
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    def _parts(self) -> list[Path]:
        # Time-ordered names: reading in name order lets the newest entry of a key win.
        return sorted(self.directory.glob("part-*.parquet"))

    @staticmethod
    def _clean(row: dict[str, Any]) -> dict[str, Any]:
        # a null in a column that also holds text reads back as NaN: restore None
        return {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}

    def prefetch(self, keys: Iterable[str]) -> int:
        """Load these keys' newest entries from disk; returns how many were found."""
        wanted = {k for k in keys if k not in self._rows and k not in self._absent}
        if not wanted:
            return 0
        found: dict[str, dict[str, Any]] = {}
        for part in self._parts():
            table = pq.read_table(part, filters=[("key", "in", sorted(wanted))])
            for row in table.to_pylist():
                found[row["key"]] = self._clean(row)
        self._rows.update(found)
        self._absent.update(wanted - found.keys())
        return len(found)

    def keys(self) -> set[str]:
        """Every key on disk or pending (reads only the key column)."""
        on_disk = {
            k
            for part in self._parts()
            for k in pq.read_table(part, columns=["key"]).column("key").to_pylist()
        }
        return on_disk | {r["key"] for r in self._pending}

    def __len__(self) -> int:
        return len(self.keys())  # a scan of every part's keys: not for hot paths

    def __bool__(self) -> bool:
        return True  # an empty store is still a store (and truthiness must not scan)

    def get(self, key: str) -> dict[str, Any] | None:
        if key not in self._rows and key not in self._absent:
            self.prefetch([key])
        return self._rows.get(key)

    def put(self, key: str, row: Mapping[str, Any]) -> None:
        record = {**row, "key": key}
        self._rows[key] = record
        self._absent.discard(key)
        self._pending.append(record)
        if (
            len(self._pending) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> Path | None:
        """Write buffered entries to a new part file; returns it (None if nothing pending)."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return None
        # Time-ordered names: reload() applies parts oldest first.
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        frame = pd.DataFrame(self._pending)
        part = write_atomic(self.directory / name, lambda tmp: frame.to_parquet(tmp, index=False))
        self._pending = []
        return part

    def compact(self) -> int:
        """Merge all parts into one (only when no other process is writing); returns rows."""
        self.flush()
        parts = self._parts()
        if len(parts) <= 1:
            return len(self)
        latest: dict[str, dict[str, Any]] = {}
        for part in parts:
            for row in pq.read_table(part).to_pylist():
                latest[row["key"]] = self._clean(row)
        self._pending = list(latest.values())
        merged = self.flush()
        for part in parts:
            if part != merged:
                part.unlink()
        return len(latest)

    def __enter__(self) -> ParquetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


# ---------------------------------------------------------------------------
# enhancement cache


@dataclass(frozen=True)
class CacheEntry:
    """One enhancement output (or failure) as stored."""

    generated: str | None
    status: str  # "ok" or "failed"
    error: str | None
    prompt: str  # the prompt's name
    prompt_version: str
    backend: str
    model_id: str
    attempts: int


_RENAMED = {"kind": "prompt", "text": "generated"}


class EnhancementCache:
    """Enhancement outputs keyed by item content, prompt version, backend, model, sampling.

    Only successful entries are hits: a failed item is tried again on the next run.
    """

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        self.store = ParquetStore(directory, **kwargs)

    def get(self, key: str) -> CacheEntry | None:
        row = self.store.get(key)
        if row is None or row.get("status") != "ok":
            return None
        for old, new in _RENAMED.items():  # entries written before a column was renamed
            if new not in row and old in row:
                row = {**row, new: row[old]}
        return CacheEntry(**{k: row[k] for k in CacheEntry.__dataclass_fields__})

    def put(self, key: str, entry: CacheEntry) -> None:
        self.store.put(key, {**asdict(entry), "created_at": time.time()})

    def prefetch(self, keys: Iterable[str]) -> None:
        """Look many keys up in one pass (call before a run's `get`s)."""
        self.store.prefetch(keys)

    def flush(self) -> None:
        self.store.flush()


def content_hash(text: str | None, image_hash: str | None) -> str:
    """The identity of an item's content: its text and its image bytes, not its id."""
    return hashlib.sha256(json.dumps([text, image_hash]).encode()).hexdigest()


def cache_key(
    item_hash: str,
    spec: PromptSpec,
    backend: str,
    model_id: str,
    sampling: SamplingParams,
    extra: Iterable[str] = (),
) -> str:
    """Everything that can change an output: item, prompt version, backend, model, sampling."""
    payload = json.dumps(
        [item_hash, spec.name, spec.version, backend, model_id, sampling.as_dict(), list(extra)],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()
