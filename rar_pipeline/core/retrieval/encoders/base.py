"""The protocol every retriever encoder implements: items of any modality in, unit vectors out.

An item is a query or a candidate as the retriever sees it: text (original or enhanced),
an image, or both. Queries and candidates share one space: retrieval is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EncodeItem:
    """What the encoder embeds for one query or candidate (at least one of the two)."""

    txt: str | None
    image_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.txt and self.image_path is None:
            raise ValueError("an item needs text or an image")


@runtime_checkable
class Encoder(Protocol):
    """A retriever encoder."""

    @property
    def name(self) -> str:
        """The backbone family: offline, clip, vlm-embed."""
        ...

    @property
    def dim(self) -> int:
        """Size of the embeddings."""
        ...

    def embed(self, items: Sequence[EncodeItem]) -> np.ndarray:
        """(len(items), dim) float32 rows of unit length, in item order."""
        ...
