"""The cache's key -> row map in PostgreSQL: one table that many workers on many hosts share.

The same interface, keys, row encoding and checksums as `store.SqliteStore`, which stays
the one-host default (SQLite's WAL needs every process on one host). Every store is a
slice of one table, `rar_cache`, named by its `store` column (`enhancements`,
`perception/features`...); keys are content hashes, so corpora can share entries.

- Lookups are batched (`key = ANY(...)`, `_CHUNK` keys a query).
- Writes are buffered and committed in one `INSERT ... ON CONFLICT` statement per flush:
  two workers writing the same key never make two rows. An existing row is rewritten
  only if the new value differs (a later put replaces an earlier one, as in SQLite: a
  failed enhancement is replaced by its later success), so workers caching the same item
  rewrite nothing.
- A row whose checksum fails, or that does not decode, is a miss and is reported; the
  next put of that key repairs it.
- A lost connection (the server restarted, the network dropped) is reopened and the
  statement retried for up to `reconnect_seconds`; statements are idempotent, so a retried
  flush neither loses nor duplicates a row. After that the error is raised, naming the
  server.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from rar_pipeline.core.enhance.store import BufferedStore

logger = logging.getLogger(__name__)
TABLE = "rar_cache"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    "store TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, checksum TEXT NOT NULL, "
    "written_at DOUBLE PRECISION, PRIMARY KEY (store, key))"
)
_UPSERT = (
    f"INSERT INTO {TABLE} (store, key, value, checksum, written_at) VALUES %s "
    "ON CONFLICT (store, key) DO UPDATE SET value = EXCLUDED.value, "
    "checksum = EXCLUDED.checksum, written_at = EXCLUDED.written_at "
    f"WHERE {TABLE}.value IS DISTINCT FROM EXCLUDED.value "
    f"OR {TABLE}.checksum IS DISTINCT FROM EXCLUDED.checksum"
)
_SCHEMA_LOCK = 0x7261725F63616368  # pg_advisory_xact_lock key: one creator at a time


def is_database_url(location: str) -> bool:
    """Whether a cache location names a PostgreSQL database rather than a folder."""
    return bool(re.match(r"postgres(ql)?(\+\w+)?://", str(location)))


def libpq_url(url: str) -> str:
    """`postgresql+psycopg2://...` (SQLAlchemy's form) as libpq takes it: `postgresql://...`."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url)


def vacuum(url: str) -> int:
    """`VACUUM ANALYZE` the shared table (space left by rewritten rows); returns its rows."""
    import psycopg2

    conn = psycopg2.connect(libpq_url(url), connect_timeout=10)
    conn.autocommit = True  # VACUUM cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(_SCHEMA)
            cur.execute(f"VACUUM ANALYZE {TABLE}")
            cur.execute(f"SELECT count(*) FROM {TABLE}")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


class PostgresStore(BufferedStore):
    """A durable map from string keys to JSON rows in a PostgreSQL table workers share.

    Args:
        url: the database (`postgresql://user@host:port/db`, `+psycopg2` accepted).
        name: the store's name within the table (`enhancements`, `perception/features`).
        reconnect_seconds: how long a lost connection is retried before the error is raised.
        **options: `BufferedStore`'s (`flush_every`, `flush_seconds`, `on_damage`).
    """

    chunk = 1000

    def __init__(
        self, url: str, name: str, *, reconnect_seconds: float = 60.0, **options: Any
    ) -> None:
        super().__init__(**options)
        self.url, self.name, self.where = libpq_url(url), name, name
        self.reconnect_seconds = reconnect_seconds
        self._conn: Any = None
        self._run(self._create_table)

    def __repr__(self) -> str:
        return f"PostgresStore({redacted(self.url)!r}, {self.name!r})"

    # -- the connection

    def _connect(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(self.url, connect_timeout=10)
        conn.autocommit = False
        return conn

    def _run(self, statement: Callable[[Any], Any]) -> Any:
        """Run `statement(cursor)` in one transaction; reconnect and retry if the link drops."""
        import psycopg2

        deadline = time.monotonic() + self.reconnect_seconds
        wait = 0.2
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                with self._conn, self._conn.cursor() as cur:  # commits, or rolls back
                    return statement(cur)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._drop_connection()
                if time.monotonic() + wait > deadline:
                    raise ConnectionError(
                        f"the cache database {redacted(self.url)} did not answer for "
                        f"{self.reconnect_seconds:.0f} s: {exc}".strip()
                    ) from exc
                logger.warning("cache database connection lost (%s); retrying", exc)
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self._conn = None

    @staticmethod
    def _create_table(cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cur.execute(_SCHEMA)

    # -- the rows

    def _select(self, keys: list[str]) -> list[tuple[str, str, str]]:
        def select(cur: Any) -> list[tuple[str, str, str]]:
            cur.execute(
                f"SELECT key, value, checksum FROM {TABLE} WHERE store = %s AND key = ANY(%s)",
                (self.name, keys),
            )
            return cur.fetchall()

        return self._run(select)

    def _stored_keys(self) -> set[str]:
        def select(cur: Any) -> set[str]:
            cur.execute(f"SELECT key FROM {TABLE} WHERE store = %s", (self.name,))
            return {k for (k,) in cur.fetchall()}

        return self._run(select)

    def _write(self, batch: list[tuple[str, str, str, float]]) -> None:
        from psycopg2.extras import execute_values

        rows = [(self.name, *row) for row in batch]
        self._run(lambda cur: execute_values(cur, _UPSERT, rows, page_size=1000))

    def compact(self) -> int:
        """Reclaim space left by rewritten rows (`vacuum`); returns this store's entries."""
        self.flush()
        vacuum(self.url)
        return len(self)

    def _close(self) -> None:
        self._drop_connection()
