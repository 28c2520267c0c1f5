"""`create_encoder` builds a retriever encoder by name; `load_encoder` reloads a saved one."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from rar_pipeline.core.enhance.stores import CacheRoot
from rar_pipeline.core.retrieval.encoders.base import ENCODER_CONFIG, TrainableEncoder
from rar_pipeline.core.retrieval.options import ENCODERS


def _encoder_class(name: str) -> Any:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    module, _, cls = ENCODERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_encoder(
    name: str = "offline", *, cache_dir: Path | CacheRoot | None = None, **options: Any
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


def load_encoder(directory: Path, *, cache_dir: Path | CacheRoot | None = None) -> TrainableEncoder:
    """Reload an encoder saved with `save`, or a retriever checkpoint's: no pickle.

    A checkpoint folder (`checkpoint.CHECKPOINT_FILE`) is verified against its recorded
    hashes first: a truncated or tampered checkpoint is never loaded.

    Raises:
        FileNotFoundError: no saved encoder in `directory`.
        CheckpointError: a checkpoint whose files do not match their hashes.
        ValueError: the saved encoder's name is unknown.
    """
    from rar_pipeline.core.retrieval import checkpoint

    if (Path(directory) / checkpoint.CHECKPOINT_FILE).is_file():
        checkpoint.read_checkpoint(directory)
        directory = Path(directory) / checkpoint.ENCODER_DIR
    config_path = Path(directory) / ENCODER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"no saved encoder in {directory} (no {ENCODER_CONFIG})")
    name = json.loads(config_path.read_text())["encoder"]
    return _encoder_class(name).load(Path(directory), cache_dir=cache_dir)
