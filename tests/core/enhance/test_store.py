"""The SQLite store: durable, shared by concurrent runs, and never trusting damaged bytes."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
from pathlib import Path

import pytest

from rar_pipeline.core.enhance.store import SqliteStore

MANUAL = {"flush_every": 10_000, "flush_seconds": 1e9}  # flushes only when asked to


def _fill(path: Path, n: int = 200, size: int = 300) -> dict[str, dict]:
    rows = {f"k{i:04d}": {"text": f"caption {i} " + "x" * size, "n": i} for i in range(n)}
    with SqliteStore(path, **MANUAL) as store:
        for key, row in rows.items():
            store.put(key, row)
    return rows


def test_entries_round_trip_with_bytes_and_nulls(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    with SqliteStore(path) as store:
        store.put("a", {"v": b"\x00\xff\x10", "text": None, "n": 3})
    assert SqliteStore(path).get("a") == {"v": b"\x00\xff\x10", "text": None, "n": 3}
    assert SqliteStore(path).get("missing") is None


def test_unflushed_entries_are_lost_flushed_ones_survive_a_kill(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    killed = SqliteStore(path, **MANUAL)
    killed.put("kept", {"v": 1})
    killed.flush()
    killed.put("lost", {"v": 2})  # the process dies here: no flush, no close
    resumed = SqliteStore(path)
    assert resumed.get("kept") == {"v": 1} and resumed.get("lost") is None


def test_the_store_flushes_by_itself(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.sqlite", flush_every=3, flush_seconds=1e9)
    for i in range(7):
        store.put(f"k{i}", {"v": i})
    assert len(SqliteStore(tmp_path / "s.sqlite")) == 6  # two full buffers committed


def test_a_later_put_replaces_an_earlier_one(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    with SqliteStore(path) as first:
        first.put("k", {"v": "old"})
    with SqliteStore(path) as second:
        second.put("k", {"v": "new"})
    assert SqliteStore(path).get("k") == {"v": "new"} and len(SqliteStore(path)) == 1


def _writer(path: str, start: int) -> None:
    store = SqliteStore(Path(path), flush_every=7, flush_seconds=1e9)
    for i in range(start, start + 300):
        store.put(f"k{i}", {"v": i})
    store.close()


def test_processes_writing_one_store_at_once_lose_nothing(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    SqliteStore(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), n * 1000)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    store = SqliteStore(path)
    assert len(store) == 900
    assert store.get("k2299") == {"v": 2299}


def test_a_truncated_file_is_set_aside_and_the_store_starts_empty(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    _fill(path, n=400)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 3)
    messages: list[str] = []
    store = SqliteStore(path, on_damage=messages.append)
    found = store.prefetch(f"k{i:04d}" for i in range(400))
    # SQLite either refuses the file outright or reads what survives; nothing is invented
    assert found < 400
    assert all(store.get(f"k{i:04d}") in (None, {"text": f"caption {i} " + "x" * 300, "n": i})
               for i in range(400))  # fmt: skip
    if messages:
        assert store.damaged >= 1 and "damaged" in messages[0]
        assert list(tmp_path.glob("s.sqlite.corrupt-*"))
    store.put("new", {"v": 1})
    store.flush()
    assert SqliteStore(path).get("new") == {"v": 1}  # and the store works again


def test_a_file_that_is_not_a_database_is_set_aside(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    messages: list[str] = []
    store = SqliteStore(path, on_damage=messages.append)
    assert store.get("k") is None and store.damaged == 1
    assert "damaged" in messages[0] and list(tmp_path.glob("s.sqlite.corrupt-*"))
    store.put("k", {"v": 1})
    store.close()
    assert SqliteStore(path).get("k") == {"v": 1}


def test_flipped_bytes_never_change_an_answer(tmp_path: Path):
    """Any single flipped byte: an entry reads back exactly as written, or not at all."""
    path = tmp_path / "s.sqlite"
    rows = _fill(path, n=60)
    original = path.read_bytes()
    rng = random.Random(7)
    wrong = 0
    for _ in range(40):
        damaged = bytearray(original)
        position = rng.randrange(len(damaged))
        damaged[position] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        for leftover in tmp_path.glob("s.sqlite*"):
            if leftover != path:
                leftover.unlink()
        try:
            store = SqliteStore(path, on_damage=lambda _m: None)
            store.prefetch(rows)
            wrong += sum(store.get(k) not in (None, row) for k, row in rows.items())
            store._conn.close()
        except sqlite3.DatabaseError:
            pass  # refused loudly is fine too; served wrongly is not
    assert wrong == 0


def test_a_checksum_mismatch_is_a_miss_and_is_reported(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    _fill(path, n=3)
    with sqlite3.connect(path) as conn:  # an edit that keeps the file valid SQLite
        conn.execute("UPDATE entries SET value = replace(value, 'caption 1', 'caption 9')")
    messages: list[str] = []
    store = SqliteStore(path, on_damage=messages.append)
    assert store.get("k0001") is None and store.get("k0002") is not None
    assert store.damaged == 1 and "checksum" in messages[0]


def test_a_folder_is_not_mistaken_for_a_damaged_store(tmp_path: Path):
    with pytest.raises(IsADirectoryError):
        SqliteStore(tmp_path)
    assert tmp_path.is_dir() and not list(tmp_path.parent.glob(f"{tmp_path.name}.corrupt-*"))


def test_compact_keeps_every_entry(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    rows = _fill(path, n=50)
    with SqliteStore(path) as store:
        assert store.compact() == 50
    fresh = SqliteStore(path)
    fresh.prefetch(rows)
    assert all(fresh.get(k) == row for k, row in rows.items())
