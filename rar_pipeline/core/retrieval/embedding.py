"""Embedding many items with an encoder: in batches, and robustly for the index and search.

`embed_all` embeds in batches (training's validation and mining, benchmarks);
`embed_robustly` never lets one item that cannot be embedded fail the rest (the index and
search: a corpus image that rotted since validation is embedded from its text alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rar_pipeline.core.retrieval.encoders.base import EncodeItem, Encoder


def embed_all(
    encoder: Encoder,
    items: Sequence[EncodeItem],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(len(items), dim) embeddings, computed `batch_size` items at a time."""
    parts = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        parts.append(encoder.embed(batch))
        if progress:
            progress(len(batch))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


@dataclass
class Embedded:
    """Vectors of items, some of which could not be embedded whole.

    Attributes:
        vectors: (n, dim); a row of zeros where an item failed.
        failed: item index -> why it has no vector (text nor image could be embedded).
        degraded: item index -> why only its text was embedded (its image failed).
    """

    vectors: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)
    degraded: dict[int, str] = field(default_factory=dict)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def embed_robustly(
    encoder: Encoder,
    items: Sequence[EncodeItem],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Embedded:
    """Like `embed_all`, but an item that cannot be embedded never fails the rest.

    A batch that raises is embedded item by item; an item whose image cannot be read
    (a corpus validated with `--image-check exists`, a file that rotted since) is embedded
    from its text alone, and one with nothing embeddable is reported, not raised.
    """
    vectors = np.zeros((len(items), encoder.dim), dtype=np.float32)
    out = Embedded(vectors)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        try:
            vectors[start : start + len(batch)] = encoder.embed(batch)
        except Exception:  # noqa: BLE001 - narrowed down item by item below
            for offset, item in enumerate(batch):
                index = start + offset
                try:
                    vectors[index] = encoder.embed([item])[0]
                except Exception as exc:  # noqa: BLE001 - recorded per item
                    if item.txt and item.image_path is not None:
                        try:
                            vectors[index] = encoder.embed([EncodeItem(item.txt)])[0]
                            out.degraded[index] = _reason(exc)
                            continue
                        except Exception as text_exc:  # noqa: BLE001
                            exc = text_exc
                    out.failed[index] = _reason(exc)
        if progress:
            progress(len(batch))
    return out
