"""Write and read cost of the cache stores, on the entries a `rar demo` run cached.

    python benchmarks/cache_stores.py --cache artifacts/demo/cache [--stores sqlite parquet]

Loads every entry of the demo's enhancement cache and perception caches, writes them into a
fresh store of each kind (flushing every 1,024 entries, as a run does), then reads them back
from a new instance (cold): all keys at once, and one pool shard's worth (804 keys, the
largest demo partition) the way `run_enhancement` does (one prefetch, then gets).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def _entries(cache: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """name -> [(key, row)] from a cache folder in either format."""
    import pyarrow.parquet as pq

    from rar_pipeline.core.enhance.store import SqliteStore

    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name in ("enhancements", "perception/features", "perception/ocr"):
        parts = sorted((cache / name).glob("part-*.parquet"))
        rows: dict[str, dict[str, Any]] = {}
        for part in parts:
            for row in pq.read_table(part).to_pylist():
                rows[row.pop("key")] = row
        db = cache / f"{name}.sqlite"
        if not rows and db.is_file():
            store = SqliteStore(db)
            rows = {k: store.get(k) for k in store.keys()}
        found[name] = list(rows.items())
    return found


def _store(kind: str, where: Path) -> Any:
    if kind == "sqlite":
        from rar_pipeline.core.enhance.store import SqliteStore

        return SqliteStore(where.with_suffix(".sqlite"))
    from rar_pipeline.core.enhance.cache import ParquetStore  # the store before SQLite

    return ParquetStore(where)


def _close(store: Any) -> None:
    getattr(store, "close", store.flush)()  # SQLite folds its write-ahead log in on close


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(kind: str, name: str, entries: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "store"
        store = _store(kind, where)
        started = time.perf_counter()
        for key, row in entries:
            store.put(key, row)
        store.flush()
        write_s = time.perf_counter() - started
        _close(store)
        keys = [k for k, _ in entries]
        started = time.perf_counter()
        cold = _store(kind, where)
        cold.prefetch(keys)
        hits = sum(cold.get(k) is not None for k in keys)
        read_all_s = time.perf_counter() - started
        _close(cold)
        partition = keys[: min(804, len(keys))]
        started = time.perf_counter()
        cold = _store(kind, where)
        cold.prefetch(partition)
        for key in partition:
            cold.get(key)
        read_partition_s = time.perf_counter() - started
        _close(cold)
        return {
            "store": kind,
            "cache": name,
            "entries": len(entries),
            "write_s": round(write_s, 3),
            "read_all_s": round(read_all_s, 3),
            "read_804_s": round(read_partition_s, 3),
            "hits": hits,
            "bytes": _size(Path(tmp)),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("artifacts/demo/cache"))
    parser.add_argument("--stores", nargs="+", default=["sqlite"])
    args = parser.parse_args()
    for name, entries in _entries(args.cache).items():
        for kind in args.stores:
            print(json.dumps(measure(kind, name, entries)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
