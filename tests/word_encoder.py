"""A deterministic bag-of-words encoder for index and evaluation tests: texts sharing words
are near, it counts what it embeds, and image items embed by their file name."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from rar_pipeline.core.retrieval.encoders.base import EncodeItem


class WordEncoder:
    """Each word hashes to a dimension; an item is the unit sum of its words."""

    name = "words"

    def __init__(self, dim: int = 64) -> None:
        self._dim = dim
        self.embedded: list[EncodeItem] = []

    @property
    def dim(self) -> int:
        return self._dim

    def _vector(self, item: EncodeItem) -> np.ndarray:
        words = (item.txt or "").lower().split()
        if item.image_path is not None:
            words.append(f"image:{item.image_path.name}")
        vector = np.zeros(self._dim, dtype=np.float32)
        for word in words:
            vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % self._dim] += 1.0
        norm = np.linalg.norm(vector)
        return vector / norm if norm else vector

    def embed(self, items: Sequence[EncodeItem]) -> np.ndarray:
        self.embedded.extend(items)
        return np.stack([self._vector(i) for i in items]) if items else np.zeros((0, self._dim))

    def embed_text(self, *texts: str) -> np.ndarray:
        """Vectors of plain texts, without counting them as embedded items."""
        return np.stack([self._vector(EncodeItem(t)) for t in texts])
