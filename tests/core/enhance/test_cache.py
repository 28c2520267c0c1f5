"""The enhancement cache: hits, failures, and keys that change with everything that matters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rar_pipeline.core.enhance.cache import (
    CacheEntry,
    EnhancementCache,
    cache_key,
    content_hash,
)
from rar_pipeline.core.enhance.prompts import CORPUS_CAPTION, QUERY_CAPTION
from rar_pipeline.core.enhance.vlm.base import SamplingParams
from rar_pipeline.core.files import file_hash

# flushes only when asked to
MANUAL = {"flush_every": 10_000, "flush_seconds": 1e9}


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
    cache = EnhancementCache(tmp_path / "c.sqlite")
    cache.put("k", _entry())
    hit = cache.get("k")
    assert hit is not None and hit.status == "ok" and hit.generated == "a teal triangle"
    assert _failure(cache, "k") is None


def test_failed_entries_are_not_hits(tmp_path: Path):
    cache = EnhancementCache(tmp_path / "c.sqlite")
    cache.put("k", _entry("failed", None, "timeout (after 3 attempts)"))
    assert cache.get("k") is None
    failed = _failure(cache, "k")
    assert failed is not None
    assert failed.status == "failed" and failed.error == "timeout (after 3 attempts)"


def test_unknown_keys_are_neither_hits_nor_failures(tmp_path: Path):
    cache = EnhancementCache(tmp_path / "c.sqlite")
    assert cache.get("nope") is None and _failure(cache, "nope") is None


def test_hits_and_failures_survive_a_new_cache_instance(tmp_path: Path):
    cache = EnhancementCache(tmp_path / "c.sqlite", **MANUAL)
    cache.put("ok", _entry())
    cache.put("bad", _entry("failed", None, "boom"))
    cache.flush()
    again = EnhancementCache(tmp_path / "c.sqlite")
    assert again.get("ok").generated == "a teal triangle"
    assert again.get("bad") is None
    assert _failure(again, "bad").error == "boom"
    assert len(again.store) == 2


def test_a_later_success_replaces_a_failure(tmp_path: Path):
    cache = EnhancementCache(tmp_path / "c.sqlite", **MANUAL)
    cache.put("k", _entry("failed", None, "boom"))
    cache.flush()
    retry = EnhancementCache(tmp_path / "c.sqlite", **MANUAL)
    retry.put("k", _entry())
    retry.flush()
    final = EnhancementCache(tmp_path / "c.sqlite")
    assert final.get("k").generated == "a teal triangle"
    assert _failure(final, "k") is None


def test_entries_read_back_exactly_as_stored(tmp_path: Path):
    ok = _entry()
    failed = _entry("failed", None, "boom")
    cache = EnhancementCache(tmp_path / "c.sqlite", **MANUAL)
    cache.put("ok", ok)
    cache.put("bad", failed)
    cache.flush()
    again = EnhancementCache(tmp_path / "c.sqlite")
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
