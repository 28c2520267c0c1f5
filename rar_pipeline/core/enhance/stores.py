"""Where the cache stores live: a folder of SQLite files, or a PostgreSQL database.

A `CacheRoot` is the one value the caches are given (the enhancement cache, the offline
backend's image features and OCR, the offline encoder's text features). Its location is a
folder (one SQLite file per store: the one-host default) or a `postgresql://` URL (one
table many workers share: `postgres_store`), set by the corpus' `cache_url` setting. The
stores behave alike: same keys, same row encoding and checksums, batched lookups, a
damaged entry is a miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rar_pipeline.core.enhance.postgres_store import PostgresStore, is_database_url, redacted
from rar_pipeline.core.enhance.store import SqliteStore

Store = SqliteStore | PostgresStore


@dataclass(frozen=True)
class CacheRoot:
    """A folder (SQLite files) or a PostgreSQL URL, and a sub-folder of store names in it."""

    location: str
    prefix: str = ""

    @classmethod
    def of(cls, where: CacheRoot | Path | str | None) -> CacheRoot | None:
        """`where` as a cache root (None stays None: no cache)."""
        if where is None or isinstance(where, CacheRoot):
            return where
        return cls(str(where))

    @property
    def shared(self) -> bool:
        """Whether the stores are in a database many hosts share."""
        return is_database_url(self.location)

    def __truediv__(self, part: str) -> CacheRoot:
        return CacheRoot(self.location, f"{self.prefix}/{part}" if self.prefix else part)

    def store(self, name: str, **options: Any) -> Store:
        """Open store `name`: `<folder>/<prefix>/<name>.sqlite`, or its rows in the database.

        `options` are the stores' own (`flush_every`, `flush_seconds`, `on_damage`).
        """
        full = f"{self.prefix}/{name}" if self.prefix else name
        if self.shared:
            return PostgresStore(self.location, full, **options)
        return SqliteStore(Path(self.location) / f"{full}.sqlite", **options)

    def __str__(self) -> str:
        if self.shared:
            where = redacted(self.location)
            return f"{where}#{self.prefix}" if self.prefix else where
        return str(Path(self.location, self.prefix))
