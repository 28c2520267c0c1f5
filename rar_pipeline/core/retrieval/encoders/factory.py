"""`create_encoder` builds a retriever encoder by name; `load_encoder` reloads a saved one."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from rar_pipeline.core.retrieval.encoders.base import ENCODER_CONFIG, TrainableEncoder

# name -> "module:class"; each class has `__init__(**options)` and
# `load(directory, *, cache_dir=None)`. Imported lazily: torch-heavy modules load on use.
ENCODERS: dict[str, str] = {
    "offline": "rar_pipeline.core.retrieval.encoders.offline:OfflineEncoder",
}


def _encoder_class(name: str) -> Any:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    module, _, cls = ENCODERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_encoder(
    name: str = "offline", *, cache_dir: Path | None = None, **options: Any
) -> TrainableEncoder:
    """Build a fresh (untrained heads) encoder.

    Args:
        name: one of `ENCODERS`.
        cache_dir: where frozen backbone features are cached (offline).
        **options: the encoder's own settings (offline: dim, seed, trained; clip and
            vlm-embed: model, dim, seed, trained, ...).

    Raises:
        ValueError: an unknown encoder or setting.
    """
    cls = _encoder_class(name)
    return cls(cache_dir=cache_dir, **options)


def load_encoder(directory: Path, *, cache_dir: Path | None = None) -> TrainableEncoder:
    """Reload an encoder saved with `save` (or a checkpoint holding one): no pickle.

    Raises:
        FileNotFoundError: no saved encoder in `directory`.
        ValueError: the saved encoder's name is unknown.
    """
    config_path = Path(directory) / ENCODER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"no saved encoder in {directory} (no {ENCODER_CONFIG})")
    name = json.loads(config_path.read_text())["encoder"]
    return _encoder_class(name).load(Path(directory), cache_dir=cache_dir)
