"""The enhancement cache: outputs keyed by everything that can change them.

Entries live in a store of a cache root (`stores.CacheRoot`: a SQLite file on one host, or
a PostgreSQL table that workers share; atomic commits, concurrent writers, checksummed
rows); a damaged entry or file is a miss, recomputed on the next request, never served.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rar_pipeline.core.enhance.prompts import PromptSpec
from rar_pipeline.core.enhance.store import SqliteStore
from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.enhance.vlm.base import SamplingParams

# ---------------------------------------------------------------------------
# enhancement cache

STORE = "enhancements"  # its store's name in a cache root (`enhancements.sqlite`)


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


class EnhancementCache:
    """Enhancement outputs keyed by item content, prompt version, backend, model, sampling.

    Only successful entries are hits: a failed item is tried again on the next run.
    """

    def __init__(
        self,
        where: Path | CacheRoot,
        *,
        on_damage: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """`where`: a SQLite file, or the cache root whose `enhancements` store to open."""
        options = {"on_damage": on_damage, **kwargs}
        self.store = (
            where.store(STORE, **options)
            if isinstance(where, CacheRoot)
            else SqliteStore(where, **options)
        )

    def get(self, key: str) -> CacheEntry | None:
        row = self.store.get(key)
        if row is None or row.get("status") != "ok":
            return None
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
