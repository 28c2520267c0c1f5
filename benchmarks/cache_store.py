"""The cache stores at 1M keys: inserts and lookups per second, PostgreSQL against SQLite.

Each store is filled with N entries shaped like the enhancement cache's (a 64-hex key, a
~300-byte JSON row), written as the engine writes them (`put`, a commit every 1,024), then
read back as a run does: `prefetch` of random batches of 1,000 keys from a fresh store
(nothing memoised), right after the load and after `rar compact-cache` (VACUUM; on
PostgreSQL also ANALYZE, which autovacuum would do in time), then one batch of 10,000
keys of which half are absent. PostgreSQL is a throwaway
server started here (`stack.servers.postgres`: fsync off, as in the local stack).

    .venv/bin/python benchmarks/cache_store.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_pipeline.core.enhance.stores import CacheRoot  # noqa: E402
from rar_pipeline.stack.servers import postgres  # noqa: E402


def _key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _row(i: int) -> dict:
    return {
        "generated": f"a red circle above the word MAPLIX, product {i}. " + "x" * 200,
        "status": "ok", "error": None, "prompt": "caption", "prompt_version": "v3",
        "backend": "openai", "model_id": "Qwen/Qwen2.5-VL-7B-Instruct", "attempts": 1,
    }  # fmt: skip


def _lookups(root: CacheRoot, n: int, rng: random.Random, batches: int = 100) -> float:
    """Lookups per second: `batches` prefetches of 1,000 random keys, a fresh store each."""
    found = looked = 0
    start = time.perf_counter()
    for _ in range(batches):
        reader = root.store("enhancements")  # nothing memoised
        keys = list({_key(rng.randrange(n)) for _ in range(1000)})
        found += reader.prefetch(keys)
        looked += len(keys)
        reader.close()
    assert found == looked
    return looked / (time.perf_counter() - start)


def measure(root: CacheRoot, n: int) -> dict[str, float]:
    start = time.perf_counter()
    with root.store("enhancements") as store:
        for i in range(n):
            store.put(_key(i), _row(i))
    inserts = n / (time.perf_counter() - start)
    rng = random.Random(0)
    fresh = _lookups(root, n, rng)  # right after the load: PostgreSQL has no statistics yet
    with root.store("enhancements") as store:
        store.compact()  # `rar compact-cache`: VACUUM (ANALYZE)
    compacted = _lookups(root, n, rng)
    reader = root.store("enhancements")
    start = time.perf_counter()
    mixed = [_key(rng.randrange(2 * n)) for _ in range(10_000)]
    reader.prefetch(mixed)
    mixed_rate = len(mixed) / (time.perf_counter() - start)
    return {
        "inserts/s": inserts,
        "lookups/s, right after the load": fresh,
        "lookups/s, after compact-cache": compacted,
        "lookups/s, half the keys absent": mixed_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {"sqlite": measure(CacheRoot(str(Path(tmp) / "cache")), args.n)}
        with postgres(Path(tmp) / "pg") as server:
            results["postgresql"] = measure(CacheRoot(server.create_database("cache")), args.n)
    print(f"{args.n:,} entries")
    print(f"| store | {' | '.join(results['sqlite'])} |")
    print("|---|" + "---|" * len(results["sqlite"]))
    for name, figures in results.items():
        print(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in figures.values()) + " |")


if __name__ == "__main__":
    main()
