"""A durable key -> row map in one SQLite file: what the caches keep their entries in.

SQLite in WAL mode gives what a cache shared by concurrent runs needs without this project
writing a storage engine: atomic commits (a killed run loses at most its unflushed buffer,
never half a batch), several processes writing at once (each commit waits its turn), and
damage detection:

- every row carries a sha256 of its value, checked on each read: a flipped byte in a
  value is a miss (the item is recomputed), never a wrong answer served as valid;
- a file SQLite cannot read (truncated, overwritten, not a database) is moved aside as
  `<name>.corrupt-<time>` and the store starts empty: its items are recomputed.

Both are counted in `damaged` and reported through `on_damage` (the caches log a warning).
Values are JSON objects; `bytes` values (image features) are stored as base64.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

logger = logging.getLogger(__name__)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    "key TEXT PRIMARY KEY, value TEXT NOT NULL, checksum TEXT NOT NULL, written_at REAL)"
)


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (as opposed to a locked one, a permission problem, a full disk)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in str(exc)


def encode_row(row: Mapping[str, Any]) -> str:
    """A row as stored: JSON with sorted keys, `bytes` as base64 (every store uses it)."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"__b64__": base64.b64encode(value).decode()}
        return value

    return json.dumps({k: plain(v) for k, v in row.items()}, sort_keys=True)


def decode_row(value: str) -> dict[str, Any]:
    """The row `encode_row` stored."""

    def restore(item: Any) -> Any:
        if isinstance(item, dict) and set(item) == {"__b64__"}:
            return base64.b64decode(item["__b64__"])
        return item

    return {k: restore(v) for k, v in json.loads(value).items()}


def checksum(value: str) -> str:
    """What each stored row carries to detect damage: a short sha256 of its encoded value."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class BufferedStore:
    """What every store does alike: checked reads, a memo, and buffered, batched writes.

    Rows looked up or written are kept in memory for the process; writes are buffered and
    committed in one transaction every `flush_every` entries or `flush_seconds`;
    `prefetch` looks many keys up a chunk at a time. A row whose checksum fails, or that
    does not decode, is a miss and is reported. A store says how it selects, writes and
    lists rows (`_select`, `_write`, `_stored_keys`) and names itself in messages (`where`).

    Args:
        flush_every: entries buffered before a commit.
        flush_seconds: the longest an entry waits in the buffer.
        on_damage: called with a message whenever damage is found and routed around
            (default: a logged warning).
    """

    chunk = 500  # keys a lookup

    def __init__(
        self,
        *,
        flush_every: int = 1024,
        flush_seconds: float = 30.0,
        on_damage: Callable[[str], None] | None = None,
    ) -> None:
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.on_damage = on_damage or logger.warning
        self.damaged = 0
        self._rows: dict[str, dict[str, Any]] = {}  # looked up or written by this process
        self._absent: set[str] = set()
        self._pending: dict[str, str] = {}  # key -> encoded value
        self._last_flush = time.monotonic()

    where = "store"

    def _select(self, keys: list[str]) -> list[tuple[str, str, str]]:
        """(key, value, checksum) of the stored rows among `keys`."""
        raise NotImplementedError

    def _write(self, batch: list[tuple[str, str, str, float]]) -> None:
        """Commit (key, value, checksum, written_at) rows in one transaction."""
        raise NotImplementedError

    def _stored_keys(self) -> set[str]:
        raise NotImplementedError

    def _report(self, message: str) -> None:
        self.damaged += 1
        self.on_damage(message)

    # -- reading

    def prefetch(self, keys: Iterable[str]) -> int:
        """Load these keys' entries; returns how many were found intact."""
        wanted = [k for k in dict.fromkeys(keys) if k not in self._rows and k not in self._absent]
        found = 0
        for start in range(0, len(wanted), self.chunk):
            chunk = wanted[start : start + self.chunk]
            for key, value, stored in self._select(chunk):
                if checksum(value) != stored:
                    self._report(f"{self.where}: entry {key[:16]}... fails its checksum")
                    continue
                try:
                    self._rows[key] = decode_row(value)
                    found += 1
                except (ValueError, TypeError) as exc:
                    self._report(f"{self.where}: entry {key[:16]}... unreadable ({exc})")
            self._absent.update(k for k in chunk if k not in self._rows)
        return found

    def get(self, key: str) -> dict[str, Any] | None:
        if key not in self._rows and key not in self._absent:
            self.prefetch([key])
        return self._rows.get(key)

    def keys(self) -> set[str]:
        """Every key stored or pending."""
        return self._stored_keys() | set(self._pending)

    def __len__(self) -> int:
        return len(self.keys())

    def __bool__(self) -> bool:
        return True  # an empty store is still a store (and truthiness must not scan)

    # -- writing

    def put(self, key: str, row: Mapping[str, Any]) -> None:
        self._rows[key] = dict(row)
        self._absent.discard(key)
        self._pending[key] = encode_row(row)
        if (
            len(self._pending) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> int:
        """Commit buffered entries in one transaction; returns how many."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return 0
        now = time.time()
        batch = [(k, v, checksum(v), now) for k, v in self._pending.items()]
        self._write(batch)
        self._pending = {}
        return len(batch)

    def _close(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.flush()
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteStore(BufferedStore):
    """A durable map from string keys to JSON rows, shared safely by concurrent runs.

    Args:
        path: the database file (created with its folder if missing).
        **options: `BufferedStore`'s (`flush_every`, `flush_seconds`, `on_damage`).
    """

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)
        self.where = str(self.path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder; a store is one SQLite file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._open()

    # -- the connection, and what happens when the file is damaged

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.execute("SELECT count(*) FROM entries WHERE rowid < 0").fetchone()
            return conn
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            return self._replace_damaged(exc)

    def _replace_damaged(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Move an unreadable file aside and start an empty store in its place."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.replace(Path(f"{aside}{suffix}"))
        self._report(f"{self.path} is damaged ({exc}); moved to {aside.name}, starting empty")
        self._rows, self._absent = {}, set()
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        return conn

    @contextmanager
    def _guarded(self) -> Iterator[sqlite3.Connection]:
        """Run statements; a damaged file is replaced and the statement's result lost."""
        try:
            yield self._conn
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise  # contention, permissions, a full disk: not ours to paper over
            self._conn = self._replace_damaged(exc)

    # -- the rows

    def _select(self, keys: list[str]) -> list[tuple[str, str, str]]:
        with self._guarded() as conn:
            marks = ",".join("?" * len(keys))
            return conn.execute(
                f"SELECT key, value, checksum FROM entries WHERE key IN ({marks})", keys
            ).fetchall()
        return []  # the file was damaged: replaced by an empty one

    def _stored_keys(self) -> set[str]:
        with self._guarded() as conn:
            return {k for (k,) in conn.execute("SELECT key FROM entries")}
        return set()

    def _write(self, batch: list[tuple[str, str, str, float]]) -> None:
        with self._guarded() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO entries (key, value, checksum, written_at) "
                    "VALUES (?, ?, ?, ?)",
                    batch,
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def compact(self) -> int:
        """Reclaim space and fold the write-ahead log in (run it while nothing writes)."""
        self.flush()
        with self._guarded() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
        return len(self)

    def _close(self) -> None:
        self._conn.close()
