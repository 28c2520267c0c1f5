"""`create_encoder`: build a retriever encoder by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rar_pipeline.core.retrieval.encoders.base import Encoder

ENCODERS = ("offline",)  # clip and vlm-embed come with their tests (issue 8, item 3)


def create_encoder(
    name: str = "offline", *, cache_dir: Path | None = None, **options: Any
) -> Encoder:
    """Build an encoder.

    Args:
        name: offline.
        cache_dir: where frozen backbone features are cached (offline).
        **options: the encoder's own settings (offline: dim, seed).

    Raises:
        ValueError: an unknown encoder.
    """
    if name == "offline":
        from rar_pipeline.core.retrieval.encoders.offline import FrozenFeatures, OfflineEncoder

        return OfflineEncoder(features=FrozenFeatures(cache_dir), **options)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
