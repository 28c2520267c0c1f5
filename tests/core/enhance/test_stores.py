"""Every cache store keeps the same promises, in a SQLite folder or a PostgreSQL database.

The cases run once per kind of `CacheRoot`: a folder (SQLite, one host) and a database
(PostgreSQL on a real throwaway server, shared by workers). SQLite's file-level damage
(truncation, flipped bytes) is `test_store.py`'s; what only a shared database has
(lost connections, many writers of one key) is at the end.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import psycopg2
import pytest

from rar_pipeline.core.enhance.cache import CacheEntry, EnhancementCache
from rar_pipeline.core.enhance.postgres_store import TABLE, PostgresStore
from rar_pipeline.core.enhance.stores import CacheRoot

MANUAL = {"flush_every": 10_000, "flush_seconds": 1e9}  # flushes only when asked to


@pytest.fixture(params=["folder", "database"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> CacheRoot:
    if request.param == "folder":
        return CacheRoot(str(tmp_path / "cache"))
    return CacheRoot(request.getfixturevalue("postgres_url"))


def test_entries_round_trip_with_bytes_and_nulls(root: CacheRoot):
    with root.store("s") as store:
        store.put("a", {"v": b"\x00\xff\x10", "text": None, "n": 3})
    again = root.store("s")
    assert again.get("a") == {"v": b"\x00\xff\x10", "text": None, "n": 3}
    assert again.get("missing") is None


def test_stores_of_one_root_keep_apart(root: CacheRoot):
    with root.store("features") as features, (root / "perception").store("features") as other:
        features.put("k", {"v": 1})
        other.put("k", {"v": 2})
    assert root.store("features").get("k") == {"v": 1}
    assert (root / "perception").store("features").get("k") == {"v": 2}
    assert root.store("ocr").get("k") is None


def test_unflushed_entries_are_lost_flushed_ones_survive_a_kill(root: CacheRoot):
    killed = root.store("s", **MANUAL)
    killed.put("kept", {"v": 1})
    killed.flush()
    killed.put("lost", {"v": 2})  # the process dies here: no flush, no close
    resumed = root.store("s")
    assert resumed.get("kept") == {"v": 1} and resumed.get("lost") is None


def test_the_store_flushes_by_itself(root: CacheRoot):
    store = root.store("s", flush_every=3, flush_seconds=1e9)
    for i in range(7):
        store.put(f"k{i}", {"v": i})
    assert len(root.store("s")) == 6  # two full buffers committed


def test_a_later_put_replaces_an_earlier_one(root: CacheRoot):
    with root.store("s") as first:
        first.put("k", {"v": "old"})
    with root.store("s") as second:
        second.put("k", {"v": "new"})
    assert root.store("s").get("k") == {"v": "new"} and len(root.store("s")) == 1


def test_a_failed_enhancement_is_replaced_by_its_later_success(root: CacheRoot):
    def entry(status: str, generated: str | None) -> CacheEntry:
        return CacheEntry(generated, status, None, "caption", "v1", "fake", "m", 1)

    first = EnhancementCache(root)
    first.put("item", entry("failed", None))
    first.flush()
    assert EnhancementCache(root).get("item") is None  # a failure is never a hit
    retry = EnhancementCache(root)
    retry.put("item", entry("ok", "a red circle"))
    retry.flush()
    assert EnhancementCache(root).get("item").generated == "a red circle"


def test_many_keys_are_looked_up_in_batches(root: CacheRoot):
    with root.store("s") as store:
        for i in range(2500):
            store.put(f"k{i}", {"v": i})
    reader = root.store("s")
    assert reader.prefetch([f"k{i}" for i in range(3000)]) == 2500
    assert reader.get("k2499") == {"v": 2499} and reader.get("k2500") is None


def _writer(location: str, start: int) -> None:
    store = CacheRoot(location).store("s", flush_every=7, flush_seconds=1e9)
    for i in range(start, start + 300):
        store.put(f"k{i}", {"v": i})
    store.put("shared", {"v": "same"})  # every writer caches the same item too
    store.close()


def test_processes_writing_one_store_at_once_lose_nothing(root: CacheRoot):
    root.store("s").close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(root.location, n * 1000)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    store = root.store("s")
    assert len(store) == 901
    assert store.get("k2299") == {"v": 2299} and store.get("shared") == {"v": "same"}


def test_compact_keeps_every_entry(root: CacheRoot):
    with root.store("s") as store:
        for i in range(50):
            store.put(f"k{i}", {"v": i})
    with root.store("s") as store:
        assert store.compact() == 50
    assert root.store("s").get("k49") == {"v": 49}


# -- what only a shared database has


def _sql(url: str, statement: str, *args: object) -> list[tuple]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_a_damaged_row_is_a_miss_is_reported_and_is_repaired_by_the_next_put(postgres_url):
    with PostgresStore(postgres_url, "s") as store:
        for i in range(3):
            store.put(f"k{i}", {"text": f"caption {i}"})
    _sql(postgres_url, f"UPDATE {TABLE} SET value = replace(value, 'caption 1', 'caption 9')")
    messages: list[str] = []
    reader = PostgresStore(postgres_url, "s", on_damage=messages.append)
    assert reader.get("k1") is None and reader.get("k2") == {"text": "caption 2"}
    assert reader.damaged == 1 and "checksum" in messages[0]
    reader.put("k1", {"text": "caption 1"})  # recomputed, as a miss is
    reader.close()
    assert PostgresStore(postgres_url, "s").get("k1") == {"text": "caption 1"}


def test_the_same_entry_written_twice_is_one_row_and_is_not_rewritten(postgres_url):
    for _ in range(2):
        with PostgresStore(postgres_url, "s") as store:
            store.put("k", {"v": 1})
    [(rows, written)] = _sql(postgres_url, f"SELECT count(*), min(xmin::text) FROM {TABLE}")
    with PostgresStore(postgres_url, "s") as store:
        store.put("k", {"v": 1})
    assert rows == 1
    assert _sql(postgres_url, f"SELECT xmin::text FROM {TABLE}") == [(written,)]  # untouched


def test_a_dropped_connection_is_reopened_and_nothing_is_lost(postgres_url):
    store = PostgresStore(postgres_url, "s", **MANUAL)
    store.put("before", {"v": 1})
    store.flush()
    _sql(  # what a server restart or a network cut does to the open connection
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    store.put("after", {"v": 2})
    assert store.flush() == 1
    assert PostgresStore(postgres_url, "s").prefetch(["before", "after"]) == 2


def test_an_unreachable_database_is_a_clear_error_naming_it_without_its_password(postgres_url):
    url = postgres_url.replace("rar@", "rar:secret@").rsplit(":", 1)[0] + ":1/nowhere"
    with pytest.raises(ConnectionError, match=r"rar:\*\*\*@127\.0\.0\.1:1/nowhere.*did not answer"):
        PostgresStore(url, "s", reconnect_seconds=1)
