"""Durable caches: Parquet part files that survive a killed run and concurrent writers."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pandas as pd
import pytest

from rar_pipeline.core.enhance.cache import (
    CacheEntry,
    EnhancementCache,
    ParquetStore,
    cache_key,
    content_hash,
)
from rar_pipeline.core.enhance.prompts import CORPUS_CAPTION, QUERY_CAPTION
from rar_pipeline.core.enhance.vlm.base import SamplingParams
from rar_pipeline.core.files import file_hash

# flushes only when asked to
MANUAL = {"flush_every": 10_000, "flush_seconds": 1e9}


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"))


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if not p.name.startswith("part-")]


# ---------------------------------------------------------------------------
# ParquetStore


def test_put_then_get_in_the_same_store(tmp_path: Path):
    store = ParquetStore(tmp_path, **MANUAL)
    store.put("k", {"text": "hello", "n": 3})
    row = store.get("k")
    assert row is not None and row["text"] == "hello" and row["n"] == 3
    assert store.get("k") is not None and len(store) == 1
    assert store.get("missing") is None


def test_flush_writes_one_part_atomically(tmp_path: Path):
    store = ParquetStore(tmp_path, **MANUAL)
    store.put("a", {"v": "1"})
    store.put("b", {"v": "2"})
    assert _parts(tmp_path) == []  # buffered until flushed
    part = store.flush()
    assert part is not None and part.is_file()
    assert _parts(tmp_path) == [part]
    assert _leftovers(tmp_path) == []  # no .tmp files left behind
    assert store.flush() is None  # nothing pending: no empty part
    assert _parts(tmp_path) == [part]


def test_a_flush_that_dies_midway_leaves_no_part_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = ParquetStore(tmp_path, **MANUAL)
    store.put("a", {"v": "1"})
    store.flush()
    store.put("b", {"v": "2"})

    def dies_midway(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        store.flush()
    monkeypatch.undo()
    assert len(_parts(tmp_path)) == 1
    assert _leftovers(tmp_path) == []
    resumed = ParquetStore(tmp_path)  # every part readable: nothing half-written
    assert resumed.get("a")["v"] == "1" and resumed.get("b") is None


def test_store_flushes_by_itself_every_flush_every_entries(tmp_path: Path):
    store = ParquetStore(tmp_path, flush_every=3, flush_seconds=1e9)
    for i in range(7):
        store.put(f"k{i}", {"v": str(i)})
    assert len(_parts(tmp_path)) == 2
    assert len(ParquetStore(tmp_path)) == 6


def test_closing_the_store_as_a_context_manager_flushes(tmp_path: Path):
    with ParquetStore(tmp_path, **MANUAL) as store:
        store.put("a", {"v": "1"})
    assert ParquetStore(tmp_path).get("a")["v"] == "1"


def test_a_resumed_run_sees_flushed_entries_but_not_unflushed_ones(tmp_path: Path):
    killed = ParquetStore(tmp_path, **MANUAL)
    killed.put("done", {"v": "kept"})
    killed.flush()
    killed.put("in-flight", {"v": "lost"})
    # the process dies here: no flush, no __exit__
    resumed = ParquetStore(tmp_path, **MANUAL)
    assert resumed.get("done")["v"] == "kept"
    assert resumed.get("in-flight") is None
    assert len(resumed) == 1
    assert _leftovers(tmp_path) == []


def test_newest_entry_wins_across_parts(tmp_path: Path):
    store = ParquetStore(tmp_path, **MANUAL)
    store.put("k", {"v": "old"})
    store.flush()
    store.put("k", {"v": "new"})
    store.flush()
    later = ParquetStore(tmp_path, **MANUAL)
    later.put("k", {"v": "newest"})
    later.flush()
    assert len(_parts(tmp_path)) == 3
    fresh = ParquetStore(tmp_path)
    assert fresh.get("k")["v"] == "newest"
    assert len(fresh) == 1


def test_two_stores_writing_one_directory_both_persist(tmp_path: Path):
    first = ParquetStore(tmp_path, flush_every=5, flush_seconds=1e9)
    second = ParquetStore(tmp_path, flush_every=5, flush_seconds=1e9)
    errors: list[BaseException] = []

    def write(store: ParquetStore, prefix: str) -> None:
        try:
            for i in range(40):
                store.put(f"{prefix}{i}", {"v": f"{prefix}-{i}"})
            store.flush()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(first, "a")),
        threading.Thread(target=write, args=(second, "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    merged = ParquetStore(tmp_path)
    assert len(merged) == 80
    assert merged.get("a39")["v"] == "a-39" and merged.get("b0")["v"] == "b-0"
    assert _leftovers(tmp_path) == []


def test_compact_merges_parts_into_one_keeping_newest_values(tmp_path: Path):
    store = ParquetStore(tmp_path, **MANUAL)
    for round_ in range(3):
        store.put("shared", {"v": f"round-{round_}"})
        store.put(f"only-{round_}", {"v": str(round_)})
        store.flush()
    store.put("unflushed", {"v": "x"})
    assert len(_parts(tmp_path)) == 3
    assert store.compact() == 5
    assert len(_parts(tmp_path)) == 1
    assert _leftovers(tmp_path) == []
    fresh = ParquetStore(tmp_path)
    assert len(fresh) == 5
    assert fresh.get("shared")["v"] == "round-2"
    assert fresh.get("only-0")["v"] == "0" and fresh.get("unflushed")["v"] == "x"


# ---------------------------------------------------------------------------
# EnhancementCache


def _entry(status: str = "ok", text: str | None = "a teal triangle", error: str | None = None):
    return CacheEntry(
        generated=text,
        status=status,
        error=error,
        prompt="corpus_caption",
        prompt_version=CORPUS_CAPTION.version,
        backend="fake",
        model_id="fake-vlm",
        attempts=1 if status == "ok" else 3,
    )


def _failure(cache: EnhancementCache, key: str) -> CacheEntry | None:
    """The failure recorded for a key, read from the store as a later run would see it."""
    row = cache.store.get(key)
    if row is None or row["status"] == "ok":
        return None
    return CacheEntry(**{k: row[k] for k in CacheEntry.__dataclass_fields__})


def test_ok_entries_are_hits(tmp_path: Path):
    cache = EnhancementCache(tmp_path)
    cache.put("k", _entry())
    hit = cache.get("k")
    assert hit is not None and hit.status == "ok" and hit.generated == "a teal triangle"
    assert _failure(cache, "k") is None


def test_failed_entries_are_not_hits(tmp_path: Path):
    cache = EnhancementCache(tmp_path)
    cache.put("k", _entry("failed", None, "timeout (after 3 attempts)"))
    assert cache.get("k") is None
    failed = _failure(cache, "k")
    assert failed is not None
    assert failed.status == "failed" and failed.error == "timeout (after 3 attempts)"


def test_unknown_keys_are_neither_hits_nor_failures(tmp_path: Path):
    cache = EnhancementCache(tmp_path)
    assert cache.get("nope") is None and _failure(cache, "nope") is None


def test_hits_and_failures_survive_a_new_cache_instance(tmp_path: Path):
    cache = EnhancementCache(tmp_path, **MANUAL)
    cache.put("ok", _entry())
    cache.put("bad", _entry("failed", None, "boom"))
    cache.flush()
    again = EnhancementCache(tmp_path)
    assert again.get("ok").generated == "a teal triangle"
    assert again.get("bad") is None
    assert _failure(again, "bad").error == "boom"
    assert len(again.store) == 2


def test_a_later_success_replaces_a_failure(tmp_path: Path):
    cache = EnhancementCache(tmp_path, **MANUAL)
    cache.put("k", _entry("failed", None, "boom"))
    cache.flush()
    retry = EnhancementCache(tmp_path, **MANUAL)
    retry.put("k", _entry())
    retry.flush()
    final = EnhancementCache(tmp_path)
    assert final.get("k").generated == "a teal triangle"
    assert _failure(final, "k") is None


def test_entries_read_back_exactly_as_stored(tmp_path: Path):
    ok = _entry()
    failed = _entry("failed", None, "boom")
    cache = EnhancementCache(tmp_path, **MANUAL)
    cache.put("ok", ok)
    cache.put("bad", failed)
    cache.flush()
    again = EnhancementCache(tmp_path)
    assert again.get("ok") == ok
    assert _failure(again, "bad") == failed


# ---------------------------------------------------------------------------
# keys

BASE = {
    "item_hash": content_hash("Listing 1001.", "ab" * 32),
    "spec": CORPUS_CAPTION,
    "backend": "vllm",
    "model_id": "Qwen/Qwen3-VL-8B-Instruct",
    "sampling": SamplingParams(temperature=0.0, top_p=1.0, max_tokens=512, seed=0),
}


def _key(**change) -> str:
    return cache_key(**{**BASE, **change})


def test_cache_key_is_stable_for_equal_inputs():
    rebuilt = {
        "item_hash": content_hash("Listing 1001.", "ab" * 32),
        "spec": dataclasses.replace(CORPUS_CAPTION),
        "backend": "vllm",
        "model_id": "Qwen/Qwen3-VL-8B-Instruct",
        "sampling": SamplingParams(max_tokens=512),
    }
    assert cache_key(**rebuilt) == _key()


@pytest.mark.parametrize(
    "change",
    [
        {"item_hash": content_hash("Listing 1002.", "ab" * 32)},
        {"spec": dataclasses.replace(CORPUS_CAPTION, system=CORPUS_CAPTION.system + " Be brief.")},
        {"spec": QUERY_CAPTION},
        {"backend": "openai"},
        {"model_id": "Qwen/Qwen2.5-VL-7B-Instruct"},
        {"sampling": SamplingParams(temperature=0.7, max_tokens=512)},
        {"sampling": SamplingParams(top_p=0.9, max_tokens=512)},
        {"sampling": SamplingParams(max_tokens=128)},
        {"sampling": SamplingParams(max_tokens=512, seed=1)},
    ],
    ids=[
        "item",
        "prompt-text",
        "prompt",
        "backend",
        "model",
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
    ],
)
def test_cache_key_changes_with_everything_that_changes_the_output(change):
    assert _key(**change) != _key()


def _png_bytes(path: Path, colour: tuple[int, int, int]) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def test_content_hash_depends_on_text_and_image_bytes_not_on_paths(tmp_path: Path):
    a = _png_bytes(tmp_path / "one" / "a.png", (200, 10, 10))
    b = tmp_path / "elsewhere" / "renamed.png"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    other = _png_bytes(tmp_path / "one" / "c.png", (10, 10, 200))

    assert file_hash(a) == file_hash(b)
    same = content_hash("Listing 1001.", file_hash(a))
    assert content_hash("Listing 1001.", file_hash(b)) == same
    assert content_hash("Listing 1002.", file_hash(a)) != same
    assert content_hash("Listing 1001.", file_hash(other)) != same
    assert content_hash("Listing 1001.", None) != same
    assert content_hash(None, file_hash(a)) != content_hash("", file_hash(a))


def test_a_fresh_store_looks_up_only_what_it_is_asked_for(tmp_path: Path):
    writer = ParquetStore(tmp_path, flush_every=10)
    for i in range(25):
        writer.put(f"k{i}", {"v": str(i)})
    writer.flush()
    reader = ParquetStore(tmp_path)
    assert reader.prefetch(["k3", "k17", "absent"]) == 2
    assert reader.get("k3") == {"v": "3", "key": "k3"}
    assert reader.get("absent") is None
    assert reader.get("k24")["v"] == "24"  # not prefetched: looked up on its own
    assert len(reader) == 25 and reader.keys() >= {"k0", "k24"}
