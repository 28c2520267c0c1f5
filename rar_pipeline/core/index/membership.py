"""Which pools hold each candidate, for an index of one row per candidate.

M-BEIR ships a candidate in its task's local pool and again in the union pool; an index
row carries the pools as a list column (`pools`), so the union pool costs no second row, no
second embedding and no second index entry. A candidate's row is made from the first pool
(in shard order) that holds it, and lists every pool that does.

`Memberships` holds this for millions of candidates compactly: a 16-byte digest per did,
sorted, and a packed bit row (one bit per pool shard) per candidate: ~20 bytes a candidate
where a dict of lists takes ~200.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rar_pipeline.core.corpus.tables import iter_parquet_batches

READ_ROWS = 500_000  # dids read at a time


def did_keys(dids: Iterable[Any]) -> np.ndarray:
    """16-byte blake2b digests of dids (fixed-size strings numpy sorts and searches)."""
    digest = hashlib.blake2b
    return np.array(
        [digest(str(d).encode("utf-8", "surrogatepass"), digest_size=16).digest() for d in dids],
        dtype="S16",
    )


class Memberships:
    """The pools (in shard order) of every candidate of some pool shards.

    Args:
        shards: the pool shards, in order.
        keys: per shard, the `did_keys` of its candidates.
    """

    def __init__(self, shards: Sequence[str], keys: Sequence[np.ndarray]) -> None:
        self.shards = list(shards)
        every = np.concatenate(keys) if len(keys) else np.empty(0, "S16")
        shard = np.repeat(np.arange(len(keys), dtype=np.int64), [len(k) for k in keys])
        order = np.argsort(every, kind="stable")  # a key's entries stay in shard order
        every, shard = every[order], shard[order]
        starts = np.flatnonzero(np.r_[True, every[1:] != every[:-1]]) if len(every) else order
        width = max(1, -(-len(self.shards) // 8))
        bits = np.zeros((len(every), width), dtype=np.uint8)
        bits[np.arange(len(every)), shard // 8] = (1 << (shard % 8)).astype(np.uint8)
        self._keys = every[starts]
        self._first = shard[starts]
        self._masks = np.bitwise_or.reduceat(bits, starts, axis=0) if len(every) else bits
        self._lists: dict[bytes, list[str]] = {}

    @classmethod
    def of_tables(cls, pools: Mapping[str, Path]) -> Memberships:
        """Read the dids of every pool shard's `candidate_pool` table."""
        keys = []
        for path in pools.values():
            parts = [
                did_keys(batch.column("did").to_pylist())
                for batch in iter_parquet_batches(path, READ_ROWS, ["did"])
            ]
            keys.append(np.concatenate(parts) if parts else np.empty(0, "S16"))
        return cls(list(pools), keys)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, dids: Sequence[Any]) -> tuple[np.ndarray, list[list[str]]]:
        """Each did's first shard (its index in `shards`) and its pools.

        Raises:
            KeyError: a did none of the shards holds.
        """
        keys = did_keys(dids)
        at = np.searchsorted(self._keys, keys)
        at = np.minimum(at, max(len(self._keys) - 1, 0))
        if not len(self._keys) or (self._keys[at] != keys).any():
            missing = [d for d, k, a in zip(dids, keys, at, strict=True) if self._keys[a] != k]
            raise KeyError(f"not in any pool shard: {missing[:3]}")
        return self._first[at], [self._pools(self._masks[a].tobytes()) for a in at]

    def _pools(self, mask: bytes) -> list[str]:
        if mask not in self._lists:
            bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")
            self._lists[mask] = [self.shards[i] for i in np.flatnonzero(bits[: len(self.shards)])]
        return self._lists[mask]
